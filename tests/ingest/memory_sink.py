"""A store in dictionaries with MLflow's semantics, for unit tests of replay and the watch loop.

Metric primary key (key, timestamp, step, value, is_nan), one value per param, tags
overwrite; checkpoints in memory. A test double: production code never uses it.
"""

from __future__ import annotations

import math

from formula_foundry.tracking.ingest.sink import Batch, Checkpoint, RunInfo, Sink
from formula_foundry.tracking.ingest.stores.checkpoints import MemoryCheckpoints

__all__ = ["MemorySink"]


class MemorySink(Sink):
    kind = "memory"
    display_uri = "memory:"

    def __init__(self) -> None:
        self.checkpoints = MemoryCheckpoints()
        self.experiments: dict[str, str] = {}
        self.runs: dict[str, dict] = {}
        self.calls = 0

    def experiment_id(self, name: str) -> str:
        return self.experiments.setdefault(name, str(len(self.experiments) + 1))

    def find_run(self, run_id: str, experiment_id: str | None = None) -> RunInfo | None:
        for mid, run in self.runs.items():
            if run["tags"].get("ff.run_id") == run_id and experiment_id in (None, run["experiment_id"]):
                return RunInfo(mid, run["experiment_id"])
        return None

    def create_run(self, *, experiment_id: str, run_id: str, run_name: str | None, start_time: int,
                   tags: dict[str, str]) -> RunInfo:
        self.calls += 1
        mid = f"m{len(self.runs):031d}"
        self.runs[mid] = {"experiment_id": experiment_id, "name": run_name, "start_time": start_time,
                          "tags": dict(tags), "params": {}, "metrics": set(), "artifacts": {},
                          "status": "RUNNING", "end_time": None}
        return RunInfo(mid, experiment_id)

    def existing_params(self, mlflow_run_id: str) -> dict[str, str]:
        return dict(self.runs[mlflow_run_id]["params"])

    def commit(self, mlflow_run_id: str, batch: Batch, checkpoint: Checkpoint) -> None:
        self.calls += 1
        run = self.runs[mlflow_run_id]
        for key, value in batch.params.items():
            if run["params"].setdefault(key, value) != value:
                raise ValueError(f"param {key} conflict")
        run["tags"].update(batch.tags)
        for key, value, timestamp, step in batch.metrics:
            nan = math.isnan(value)
            run["metrics"].add((key, timestamp, step, 0.0 if nan else value, nan))
        run["artifacts"].update(batch.artifacts)
        if batch.end:
            run["status"], run["end_time"] = batch.end
        self.checkpoints.put(checkpoint)

    def set_status(self, mlflow_run_id: str, status: str, end_time: int) -> None:
        run = self.runs[mlflow_run_id]
        run["status"], run["end_time"] = status, end_time
