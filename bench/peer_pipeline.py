"""The pipeline of the course template, reproduced for comparison (do not use it).

``course`` (the headline peer) is the template as its better versions run it:
binaryFile over s3a, weights broadcast from the driver, the model rebuilt by a
factory in every iterator, ``model.predict`` per batch, features written to
Parquet once and read back, array -> vector with pyspark.ml's
``array_to_vector`` (the template's row-at-a-time Python UDF returning a
VectorUDT fails on Spark 4.2: UNSUPPORTED_DATATYPE), a StandardScaler, and
PCA fitted twice (all components, then the chosen k).
``naive`` is the same without the write and read back: every action reruns
the CNN (three times here), as many submitted notebooks do. Only difference
from the template: random weights, because ImageNet weights cannot be
downloaded here; the cost is the same.

    spark-submit bench/peer_pipeline.py INPUT OUTPUT IMAGE_SIZE [course|naive]
"""

import io
import sys

import numpy as np
import pandas as pd
from PIL import Image
from pyspark.ml.feature import PCA, StandardScaler
from pyspark.ml.functions import array_to_vector
from pyspark.sql import SparkSession
from pyspark.sql.functions import PandasUDFType, col, element_at, pandas_udf, split


def main(input_uri: str, output_uri: str, size: int, variant: str) -> None:
    from tensorflow.keras import Model
    from tensorflow.keras.applications.mobilenet_v2 import MobileNetV2, preprocess_input
    from tensorflow.keras.preprocessing.image import img_to_array

    spark = SparkSession.builder.appName("peer-notebook-pipeline").getOrCreate()
    sc = spark.sparkContext

    images = spark.read.format("binaryFile").option("pathGlobFilter", "*.jpg").option("recursiveFileLookup", "true")
    images = images.load(input_uri).withColumn("label", element_at(split(col("path"), "/"), -2))

    model = MobileNetV2(weights=None, include_top=True, input_shape=(size, size, 3))
    new_model = Model(inputs=model.input, outputs=model.layers[-2].output)
    broadcast_weights = sc.broadcast(new_model.get_weights())

    def model_fn():
        model = MobileNetV2(weights=None, include_top=True, input_shape=(size, size, 3))
        for layer in model.layers:
            layer.trainable = False
        new_model = Model(inputs=model.input, outputs=model.layers[-2].output)
        new_model.set_weights(broadcast_weights.value)
        return new_model

    def preprocess(content):
        img = Image.open(io.BytesIO(content)).resize([size, size])
        arr = img_to_array(img)
        return preprocess_input(arr)

    def featurize_series(model, content_series):
        batch = np.stack(content_series.map(preprocess))
        preds = model.predict(batch, verbose=0)
        output = [p.flatten() for p in preds]
        return pd.Series(output)

    @pandas_udf("array<float>", PandasUDFType.SCALAR_ITER)
    def featurize_udf(content_series_iter):
        model = model_fn()
        for content_series in content_series_iter:
            yield featurize_series(model, content_series)

    features_df = images.repartition(20).select(col("path"), col("label"), featurize_udf("content").alias("features"))
    if variant == "course":
        features_df.write.mode("overwrite").parquet(output_uri + "features")
        features_df = spark.read.parquet(output_uri + "features")
    vectors = features_df.withColumn("features_vec", array_to_vector("features"))
    column = "features_vec"
    if variant == "course":
        vectors = StandardScaler(inputCol=column, outputCol="scaled").fit(vectors).transform(vectors)
        column = "scaled"

    pca_full = PCA(k=1280, inputCol=column, outputCol="pca_features").fit(vectors)
    cumulative = np.cumsum(pca_full.explainedVariance)
    k = int(np.argmax(cumulative >= 0.95) + 1)
    pca = PCA(k=k, inputCol=column, outputCol="pca_features").fit(vectors)
    pca.transform(vectors).select("path", "label", "pca_features").write.mode("overwrite").parquet(output_uri + "pca")
    print(f"peer pipeline ({variant}): k={k}")
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "course")
