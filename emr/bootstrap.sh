#!/usr/bin/env bash
# EMR bootstrap action: the job's pinned Python requirements on every node, and
# (optionally) the MobileNetV2 weights in a shared Keras cache.
#   --bootstrap-actions Path=s3://BUCKET/emr/bootstrap.sh,Args=[s3://BUCKET/emr/job.txt,s3://BUCKET/emr/weights.h5]
set -euo pipefail

requirements_uri="$1"
weights_uri="${2:-}"

aws s3 cp "$requirements_uri" /tmp/fruitcloud-job.txt
# EMR's Spark brings its own pyspark; install everything else from the pins.
grep -v '^pyspark==' /tmp/fruitcloud-job.txt > /tmp/fruitcloud-job-no-spark.txt
sudo python3 -m pip install --quiet -r /tmp/fruitcloud-job-no-spark.txt

if [[ -n "$weights_uri" ]]; then
  sudo mkdir -p /opt/fruitcloud/keras/models
  sudo aws s3 cp "$weights_uri" \
    /opt/fruitcloud/keras/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5
fi
