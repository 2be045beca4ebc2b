"""The distributed backend of QuantizeService: jobs as Temporal workflows, artifacts in S3 (docs/SCALE_OUT.md).

``frontend`` is what a stateless ``serve quantize --backend temporal`` runs behind the servicers; ``worker``
is ``quantledger worker``; ``workflow`` is the job's durable control flow, ``activities`` its steps;
``contract`` holds the names and bounds the three share.
"""
