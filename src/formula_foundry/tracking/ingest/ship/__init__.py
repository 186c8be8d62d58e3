"""Shipping journals to an object store, and reading them back: ``ff-ingest ship --to URI``.

Modules: :mod:`.layout` (the keys of a destination, pure), :mod:`.state` (the
shipper's local cache of what it shipped), :mod:`.shipper` (one pass over the
journals: blobs, then segments). The central ingester's side (a shipped root
mirrored for replay) lives beside them. Nothing here imports MLflow: a compute
node ships with the base package and boto3 only.

The format of a destination is documented in :mod:`.layout` and in
``docs/journal-format.md`` ("Shipped journals").
"""
