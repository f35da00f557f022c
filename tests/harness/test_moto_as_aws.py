"""The moto server the tests run answers as AWS does: a versioned bucket's listing, an instance's console."""

from __future__ import annotations

import boto3

from harness.moto import TEST_CREDENTIALS, moto_server


def test_a_folder_whose_objects_are_deleted_is_no_common_prefix(s3, bucket):
    model = ["runs/r/pca_model/metadata/part-0", "runs/r/pca_model/stages/0/data/part-0"]
    for key in [*model, "runs/r/kept/a"]:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key} for key in model]})

    listed = s3.list_objects_v2(Bucket=bucket, Prefix="runs/r/", Delimiter="/")
    assert [p["Prefix"] for p in listed.get("CommonPrefixes", [])] == ["runs/r/kept/"]
    inside = s3.list_objects_v2(Bucket=bucket, Prefix="runs/r/pca_model/", Delimiter="/")
    assert (inside["KeyCount"], inside.get("CommonPrefixes")) == (0, None)
    # The versions are still there: only the listing of current objects changed.
    versions = s3.list_object_versions(Bucket=bucket, Prefix="runs/r/pca_model/")
    assert (len(versions["Versions"]), len(versions["DeleteMarkers"])) == (2, 2)


def test_an_instance_console_is_what_its_stand_in_wrote_and_empty_before(tmp_path):
    with moto_server(extra_env={"MOTO_CONSOLE_DIR": str(tmp_path)}) as endpoint:
        ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=TEST_CREDENTIALS["AWS_DEFAULT_REGION"])
        [instance] = ec2.run_instances(
            ImageId=ec2.describe_images()["Images"][0]["ImageId"],
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "d-master"}]}],
        )["Instances"]
        before = ec2.get_console_output(InstanceId=instance["InstanceId"])
        (tmp_path / "d-master.log").write_text("-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAA root@d\n")
        after = ec2.get_console_output(InstanceId=instance["InstanceId"])
    assert "Output" not in before, "EC2 has no output for an instance that has printed nothing yet"
    assert after["Output"] == "-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAA root@d\n"
