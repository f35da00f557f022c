"""SparkPi, the classic smoke test, on the configured Spark."""

import random

from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("SparkPi").getOrCreate()
samples = 200_000


def inside(_):
    x, y = random.random(), random.random()
    return x * x + y * y <= 1


count = spark.sparkContext.parallelize(range(samples), 4).filter(inside).count()
print(f"Pi is roughly {4.0 * count / samples}")
spark.stop()
