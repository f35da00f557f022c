"""spark-submit entry point of the featurization job; see ``featurize.cli`` for its options.

spark-submit jobs/featurize_images.py --input s3a://BUCKET/images/ --output s3a://BUCKET/runs/
"""

import sys

from featurize.cli import main

if __name__ == "__main__":
    sys.exit(main())
