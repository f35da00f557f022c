#!/usr/bin/env bash
# EMR bootstrap action, on every node: Python 3.11 (EMR 7's Amazon Linux 2023 runs
# Python 3.9, and the job needs 3.10 or later), the job's pinned requirements for it,
# and the MobileNetV2 weights in the shared Keras cache (KERAS_HOME in
# emr/step.json), so that no executor downloads them.
#   --bootstrap-actions Path=s3://BUCKET/emr/bootstrap.sh,Args=[s3://BUCKET/emr/job.txt,s3://BUCKET/emr/WEIGHTS.h5]
set -euo pipefail

requirements_uri="$1"
weights_uri="${2:-}"
python=/usr/bin/python3.11

sudo dnf install -y -q python3.11 python3.11-pip
aws s3 cp "$requirements_uri" /tmp/fruitcloud-job.txt
# EMR's Spark brings its own pyspark; install everything else from the pins.
grep -v '^pyspark==' /tmp/fruitcloud-job.txt > /tmp/fruitcloud-job-no-spark.txt
sudo "$python" -m pip install --quiet -r /tmp/fruitcloud-job-no-spark.txt

if [[ -n "$weights_uri" ]]; then
  sudo mkdir -p /opt/fruitcloud/keras/models
  sudo aws s3 cp "$weights_uri" "/opt/fruitcloud/keras/models/$(basename "$weights_uri")"
  # Keras ignores a cache directory its process cannot write (and would download the
  # weights again): writable by YARN's users, the weights themselves read-only.
  sudo chmod -R a+rX /opt/fruitcloud/keras
  sudo chmod 1777 /opt/fruitcloud/keras
fi
