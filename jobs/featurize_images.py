"""spark-submit entry point of the featurization job; see ``featurize.job`` for the CLI.

spark-submit jobs/featurize_images.py --input s3a://BUCKET/images/ --output s3a://BUCKET/runs/
"""

import sys

from featurize.job import main

if __name__ == "__main__":
    sys.exit(main())
