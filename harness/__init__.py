"""The local harness: moto on 127.0.0.1, an S3 proxy that adds latency or faults, the job launcher and
manifest reader shared by the demo, the benchmark and the tests."""
