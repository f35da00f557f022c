"""Read one text object through s3a with the configured credentials provider and endpoint."""

import sys

from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("s3a-read").getOrCreate()
print(spark.read.text(sys.argv[1]).first()[0])
spark.stop()
