"""Compare two MLflow tracking stores run by run: what the MLflow drop-in promises to keep equal.

:func:`snapshot` reads a store through ``MlflowClient`` into plain values, keyed by experiment
name and run name (ids differ between stores unless the bulk sink kept them); :func:`diff`
lists the differences in words. Metric histories compare by key, step and value (timestamps
are the producer's in both, but two runs of a script are two points in time); NaN equals NaN.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from pathlib import Path

__all__ = ["diff", "snapshot"]

# System tags that legitimately differ: ours (ff.*), and MLflow's per-process or per-store ones.
_IGNORED_TAG_PREFIXES = ("ff.", "mlflow.source.", "mlflow.user", "mlflow.log-model.history",
                         "mlflow.autologging", "mlflow.runColor")


def _value(v: float):
    return "NaN" if math.isnan(v) else v


def _artifacts(client, run_id: str, skip: tuple[str, ...]) -> dict[str, str]:
    """Artifact path -> sha256 of its bytes, for every file of the run (folders walked)."""
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(run_id, "", tmp))
        for file in sorted(p for p in local.rglob("*") if p.is_file()):
            rel = file.relative_to(local).as_posix()
            if not rel.startswith(skip):
                out[rel] = hashlib.sha256(file.read_bytes()).hexdigest()
    return out


def snapshot(tracking_uri: str, *, skip_artifacts: tuple[str, ...] = ()) -> dict:
    """Everything the equivalence test compares, as plain values: experiment -> run name -> facts."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments(view_type=ViewType.ALL)}
    runs = client.search_runs(list(experiments), run_view_type=ViewType.ALL, max_results=10_000)
    names = {r.info.run_id: r.info.run_name for r in runs}
    out: dict = {}
    for run in runs:
        tags = run.data.tags
        facts = {
            "status": run.info.status,
            "params": dict(run.data.params),
            "tags": {k: v for k, v in tags.items()
                     if not k.startswith(_IGNORED_TAG_PREFIXES) and k != "mlflow.parentRunId"},
            "parent": names.get(tags.get("mlflow.parentRunId"), tags.get("mlflow.parentRunId")),
            "metrics": {key: sorted((m.step, _value(m.value)) for m in client.get_metric_history(run.info.run_id, key))
                        for key in run.data.metrics},
            "datasets": sorted((d.dataset.name, d.dataset.digest, d.dataset.source_type,
                                tuple(sorted((t.key, t.value) for t in d.tags)))
                               for d in run.inputs.dataset_inputs),
            "artifacts": _artifacts(client, run.info.run_id, skip_artifacts),
        }
        out.setdefault(experiments[run.info.experiment_id], {})[run.info.run_name] = facts
    return out


def diff(a: dict, b: dict, *, path: str = "") -> list[str]:
    """The differences between two snapshots (or parts of them), one line each."""
    if isinstance(a, dict) and isinstance(b, dict):
        lines = []
        for key in sorted(set(a) | set(b), key=str):
            where = f"{path}/{key}"
            if key not in a:
                lines.append(f"{where}: only in the second store")
            elif key not in b:
                lines.append(f"{where}: only in the first store")
            else:
                lines += diff(a[key], b[key], path=where)
        return lines
    return [] if a == b else [f"{path}: {a!r:.200} != {b!r:.200}"]
