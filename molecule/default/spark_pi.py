"""SparkPi, the classic smoke test, on the configured Spark; then which BLAS Spark ML loads."""

import random

from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("SparkPi").getOrCreate()
samples = 200_000


def inside(_):
    x, y = random.random(), random.random()
    return x * x + y * y <= 1


count = spark.sparkContext.parallelize(range(samples), 4).filter(inside).count()
print(f"Pi is roughly {4.0 * count / samples}")
jvm = spark.sparkContext._jvm
print("BLAS", jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getName())
print("LAPACK", jvm.dev.ludovic.netlib.lapack.LAPACK.getInstance().getClass().getName())
spark.stop()
