"""What the tests share that is not a test.

Ansible runs, the EC2 stand-in and its image files, the fake IMDS, the fuzz corpus.
"""
