"""Helpers shared by the ingest tests (``ff-ingest`` against real MLflow SQLite stores).

* :func:`tracker` - the real producer :class:`~formula_foundry.tracking.Tracker` of a project;
* :func:`ingest` / :func:`ingest_json` - ``ff-ingest`` in-process, pinned to the API sink
  (issue 4's sink; the bulk SQL sink is tested with its own issue);
* :func:`ingest_cmd` - the same as a subprocess command line (for SIGKILL tests);
* :func:`dump_store` - everything a user can see in a store, keyed by producer run id,
  so two stores (with different MLflow run ids) compare with ``==``;
* :func:`reference_project` - a second project reading the first one's journals into
  its own store, for "identical to one clean ingest" comparisons.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

from tests.conftest import REPO, run_ff_ingest, subprocess_env

__all__ = [
    "SINK",
    "artifact_files",
    "child_env",
    "diff_dumps",
    "dump_store",
    "ingest",
    "ingest_cmd",
    "ingest_json",
    "journals_of",
    "reference_project",
    "store_db",
    "tracker",
]

SINK = ("--sink", "api")


def store_db(project: Path) -> Path:
    return project / "data" / "mlflow" / "mlruns.db"


def tracker(project: Path):
    """A fresh producer Tracker for ``project`` (journals under ``<project>/data/runs``)."""
    from formula_foundry.tracking import Tracker, load_config

    return Tracker(load_config(project / "config" / "mlflow.yaml"))


def ingest(project: Path, *args: str) -> int:
    """``ff-ingest -q --sink api ARGS`` in-process; returns the exit code."""
    return run_ff_ingest(project, *SINK, "-q", *args)


def ingest_json(project: Path, capsys, *args: str) -> tuple[int, dict]:
    """``ff-ingest --json --sink api ARGS`` in-process; returns (exit code, parsed summary)."""
    capsys.readouterr()
    code = run_ff_ingest(project, *SINK, "--json", *args)
    out = capsys.readouterr().out
    return code, json.loads(out)


def ingest_cmd(project: Path, *args: str) -> list[str]:
    """The command line of ``ff-ingest`` as a subprocess for ``project``."""
    return [sys.executable, "-m", "formula_foundry.tracking.ingest.cli", *SINK, "-q", *args,
            "--config", str(project / "config" / "mlflow.yaml")]


def child_env(**extra: str) -> dict[str, str]:
    env = subprocess_env(**extra)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env["PYTHONPATH"]
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


def journals_of(project: Path) -> list[Path]:
    return sorted((project / "data" / "runs").glob("*/tracking/*.jsonl"))


def reference_project(tmp_path: Path, source: Path, template_store: Path, name: str = "ref") -> Path:
    """A second project whose journal root is ``source``'s and whose store is a fresh template copy."""
    root = tmp_path / name
    (root / "config").mkdir(parents=True)
    data = yaml.safe_load((source / "config" / "mlflow.yaml").read_text())
    data["journal"]["root"] = str(source / "data" / "runs")
    (root / "config" / "mlflow.yaml").write_text(yaml.safe_dump(data))
    store_db(root).parent.mkdir(parents=True)
    shutil.copy(template_store, store_db(root))
    return root


# --------------------------------------------------------------------------- store dumps

def _local_path(uri: str) -> Path:
    return Path(unquote(urlsplit(uri).path))


def artifact_files(artifact_uri: str) -> dict[str, bytes]:
    """Every file under a run's (local) artifact location: relative path -> bytes."""
    root = _local_path(artifact_uri)
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _value(value: float | None, is_nan: int | None = 0):
    """Metric values as comparable, exact tokens (NaN is not equal to itself)."""
    if is_nan or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    return value.hex() if isinstance(value, float) else value


def dump_store(project: Path, *, client=None) -> dict:
    """Everything a user sees in ``project``'s store, keyed by the producer run id (``ff.run_id``).

    Reads MLflow's tables directly (read-only) so that *every* row counts - each
    metric history row, every tag - and the latest metrics and artifacts through
    ``MlflowClient`` and the artifact folders. MLflow run ids (random per store)
    are replaced by producer run ids wherever they appear (parent tags, paths).
    Asserts one MLflow run per producer run id and no run without one.
    """
    from tests.conftest import mlflow_client

    db = store_db(project)
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        exp_names = dict(con.execute("SELECT experiment_id, name FROM experiments"))
        runs = con.execute("SELECT run_uuid, name, status, start_time, end_time, lifecycle_stage, experiment_id,"
                           " user_id, artifact_uri FROM runs").fetchall()
        ff_ids = dict(con.execute("SELECT run_uuid, value FROM tags WHERE key = 'ff.run_id'"))
        tags = con.execute("SELECT run_uuid, key, value FROM tags").fetchall()
        params = con.execute("SELECT run_uuid, key, value FROM params").fetchall()
        metrics = con.execute("SELECT run_uuid, key, value, timestamp, step, is_nan FROM metrics").fetchall()
        latest = con.execute("SELECT run_uuid, key, value, timestamp, step, is_nan FROM latest_metrics").fetchall()
    finally:
        con.close()
    missing = [r[0] for r in runs if r[0] not in ff_ids]
    assert not missing, f"MLflow runs without an ff.run_id tag (orphans): {missing}"
    counts: dict[str, int] = {}
    for mid in ff_ids.values():
        counts[mid] = counts.get(mid, 0) + 1
    dupes = {k: v for k, v in counts.items() if v > 1}
    assert not dupes, f"producer runs with several MLflow runs (duplicates): {dupes}"

    client = client or mlflow_client(project)
    out: dict[str, dict] = {}
    for run_uuid, name, status, start, end, stage, exp_id, user, artifact_uri in runs:
        pid = ff_ids[run_uuid]
        files = artifact_files(artifact_uri)
        out[pid] = {
            "name": name, "status": status, "start_time": start, "end_time": end, "lifecycle": stage,
            "experiment": exp_names[exp_id], "user": user, "params": {}, "tags": {}, "history": [],
            "latest_table": {},
            "latest": {k: _value(v) for k, v in client.get_run(run_uuid).data.metrics.items()},
            "artifacts": files,
            "artifact_uri_tail": artifact_uri.rsplit(run_uuid, 1)[-1],
        }
    for run_uuid, key, value in tags:
        if key == "mlflow.parentRunId":
            value = ("parent", ff_ids.get(value, f"<not a run: {value}>"))
        out[ff_ids[run_uuid]]["tags"][key] = value
    for run_uuid, key, value in params:
        out[ff_ids[run_uuid]]["params"][key] = value
    for run_uuid, key, value, ts, step, is_nan in metrics:
        out[ff_ids[run_uuid]]["history"].append((key, step, ts, _value(value, is_nan)))
    for run_uuid, key, value, ts, step, is_nan in latest:
        out[ff_ids[run_uuid]]["latest_table"][key] = (step, ts, _value(value, is_nan))
    for run in out.values():
        run["history"].sort(key=repr)
    return out


def diff_dumps(a: dict, b: dict) -> list[str]:
    """Readable differences between two dumps (empty when equal)."""
    lines = []
    for pid in sorted(set(a) | set(b)):
        if pid not in a or pid not in b:
            lines.append(f"run {pid}: only in {'second' if pid not in a else 'first'} store")
            continue
        for field in a[pid]:
            if a[pid][field] != b[pid].get(field):
                left, right = a[pid][field], b[pid].get(field)
                if isinstance(left, (list, dict)) and isinstance(right, (list, dict)):
                    lines.append(f"run {pid} {field}: {len(left)} vs {len(right)} items; first difference: "
                                 f"{_first_difference(left, right)}")
                else:
                    lines.append(f"run {pid} {field}: {left!r:.200} vs {right!r:.200}")
    return lines


def _first_difference(left, right) -> str:
    if isinstance(left, dict):
        for key in sorted(set(left) | set(right), key=str):
            if left.get(key) != right.get(key):
                return f"{key!r}: {left.get(key)!r:.120} vs {right.get(key)!r:.120}"
    else:
        extra_left = [x for x in left if x not in right][:3]
        extra_right = [x for x in right if x not in left][:3]
        return f"only first: {extra_left}; only second: {extra_right}"
    return "?"
