"""The ingest side: replays journals into MLflow (needs ``formula-foundry[tracking]``).

This package is the only place that imports MLflow or watchdog. Modules:
``sink`` (the narrow store interface), ``plan`` (batching, pure),
``replay`` (checkpointed, idempotent replay), ``mlflow_sink`` (MLflow's client
API), ``checkpoints``, ``discover``, ``connect``, ``watch`` (the daemon) and
``cli`` (``ff-ingest``). Importing the package itself imports nothing heavy.
"""
