"""Everything that touches a tracking store: engines, checkpoints, the lock, the two sinks.

MLflow is imported only inside the functions that open a store (``connect.open_sink``,
``store_init``, the bulk schema guard): readers such as ``ff-ingest status`` start fast
and work while the store is down. That deferral is the one reason for an import inside
a function in the ingest package.
"""
