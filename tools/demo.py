#!/usr/bin/env python3
"""Run the demo pipeline, ingest it into MLflow, and print the command that opens the UI.

    python3 tools/dev.py demo                 # the README's command (sets up .venv first)
    .venv/bin/python tools/demo.py            # the same, in an existing environment
    .venv/bin/python tools/demo.py --fresh    # start from an empty data/ (runs, artifacts, store)

Steps:

1. ``formula_foundry.demo.run_pipeline``: a parent run ``m3-pipeline-demo`` in the
   experiment ``ff-m3-pipeline`` with nested coupon-generation and simulation runs,
   written as journals into substrate run directories under ``data/runs/``, their
   files into the content-addressed store ``data/artifacts/``.
2. ``ff-ingest`` (in-process): replays every journal under the journal roots into the
   configured store, by default the SQLite file ``data/mlflow/mlruns.db``.
3. Prints ``mlflow ui --backend-store-uri sqlite:///data/mlflow/mlruns.db --port 5000``.

Works from any directory: the project is the folder above ``tools/`` (``--project DIR``
or ``$FF_CONFIG`` choose another), and every path is relative to it. Running it again
adds another set of runs. Exit code: 0, or ff-ingest's exit code when ingesting failed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 5000

try:
    import formula_foundry  # noqa: F401
except ImportError:  # not installed: use the source tree beside this script
    sys.path.insert(0, str(ROOT / "src"))


def _config_path(project: str | None) -> Path:
    if project:
        return Path(project).resolve() / "config" / "mlflow.yaml"
    if os.environ.get("FF_CONFIG"):
        return Path(os.environ["FF_CONFIG"]).expanduser().resolve()
    return ROOT / "config" / "mlflow.yaml"


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve()) and path.resolve() != root.resolve()
    except OSError:
        return False


def fresh(cfg) -> None:
    """Remove the demo's data: run dirs, artifact store, MLflow store and ingest state (inside the project only)."""
    root = cfg.project_root
    db = cfg.tracking.sqlite_path
    targets = [cfg.journal.root, root / "data" / "artifacts", cfg.ingest.state_dir]
    if cfg.tracking.artifact_root_path is not None:
        targets.append(cfg.tracking.artifact_root_path)
    if db is not None:
        targets += [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
    elif not cfg.tracking.backend_store_uri.startswith("sqlite:"):
        print(f"--fresh: leaving the store {cfg.tracking.backend_store_uri.split('@')[-1]} alone "
              "(only a local SQLite store is removed)", file=sys.stderr)
    for target in targets:
        if not target.exists():
            continue
        if not _inside(target, root):
            print(f"--fresh: not removing {target}: it is outside the project {root}", file=sys.stderr)
            continue
        if target.is_dir():
            # The store's blobs are read-only files: make them writable so rmtree works everywhere.
            shutil.rmtree(target, onerror=lambda fn, p, _exc: (os.chmod(p, 0o700), fn(p)))
        else:
            target.unlink()
        print(f"removed {_show(target, root)}")


def _show(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def ui_command(cfg, port: int = DEFAULT_PORT) -> tuple[str | None, str]:
    """(folder to run it from or None, the ``mlflow ui`` command line) for the configured store."""
    root = cfg.project_root
    venv_mlflow = Path(sys.executable).parent / "mlflow"
    if venv_mlflow.exists():
        mlflow_bin = _show(venv_mlflow, root) if _inside(venv_mlflow, root) else str(venv_mlflow)
    else:
        mlflow_bin = "mlflow"
    uri = cfg.tracking.backend_store_uri
    default_db = (root / "data" / "mlflow" / "mlruns.db").resolve()
    if cfg.tracking.sqlite_path is not None and cfg.tracking.sqlite_path.resolve() == default_db:
        uri = "sqlite:///data/mlflow/mlruns.db"  # relative to the project root, as the README shows
        folder = root
    else:
        folder = root if mlflow_bin != "mlflow" and not Path(mlflow_bin).is_absolute() else None
    return folder, f"{mlflow_bin} ui --backend-store-uri {shlex.quote(uri)} --port {port}"


ML_VIEW = "workflowType=machine_learning"  # MLflow 3 opens experiments in its GenAI view otherwise


def _ui_links(cfg, producer_run_id: str, port: int) -> tuple[str, str] | None:
    """UI addresses of the experiment's runs and of the pipeline run (found by its ``ff.run_id`` tag)."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(cfg.tracking.backend_store_uri)
        exp = client.get_experiment_by_name("ff-m3-pipeline")
        if exp is None:
            return None
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`ff.run_id` = '{producer_run_id}'",
                                  max_results=1)
    except Exception:  # noqa: BLE001 - links are a convenience; the command is what matters
        return None
    if not runs:
        return None
    base = f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs"
    return f"{base}?{ML_VIEW}", f"{base}/{runs[0].info.run_id}?{ML_VIEW}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/demo.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=42, help="seed of every generated number (default: 42)")
    parser.add_argument("--fresh", action="store_true",
                        help="first remove data/runs, data/artifacts and the SQLite store with its ingest state")
    parser.add_argument("--no-ingest", action="store_true", help="only write the journals; do not run ff-ingest")
    parser.add_argument("--project", metavar="DIR", default=None,
                        help="project folder holding config/mlflow.yaml (default: the folder above tools/, "
                             "or $FF_CONFIG)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port in the printed UI command")
    args = parser.parse_args(argv)

    from formula_foundry.demo import run_pipeline
    from formula_foundry.tracking import load_config

    cfg = load_config(_config_path(args.project))
    root = cfg.project_root
    if args.fresh:
        fresh(cfg)

    t0 = time.perf_counter()
    result = run_pipeline(cfg, seed=args.seed, repo_dir=ROOT)  # git_sha: the code that ran
    n_refs = len(result.artifacts) + sum(len(c.artifacts) for c in result.children)
    print(f"demo pipeline: run {result.run_name!r} (ff.run_id {result.run_id}) with {len(result.children)} "
          f"nested runs in experiment {result.experiment!r}; {n_refs} artifacts in "
          f"{_show(root / 'data' / 'artifacts', root)}/; journals in "
          f"{_show(result.substrate_run_dir, root)}* ({time.perf_counter() - t0:.2f} s)")

    rc = 0
    if not args.no_ingest:
        from formula_foundry.tracking.ingest.cli.app import EXIT_JOURNAL_ERRORS, EXIT_LOCKED
        from formula_foundry.tracking.ingest.cli import main as ff_ingest

        t1 = time.perf_counter()
        rc = ff_ingest(["--config", str(cfg.source)])
        if rc == EXIT_LOCKED:
            print("an ff-ingest daemon already serves this store: it ingests the new journals itself")
            rc = 0
        elif rc == EXIT_JOURNAL_ERRORS:  # some journal (maybe not the demo's) had errors: see above
            print(f"ff-ingest reported journal errors (exit code {rc}); every other journal was ingested",
                  file=sys.stderr)
        elif rc != 0:
            print(f"ff-ingest failed with exit code {rc}; the journals are kept: rerun "
                  f"`ff-ingest --config {cfg.source}` when fixed", file=sys.stderr)
            return rc
        print(f"ingest: {time.perf_counter() - t1:.2f} s")
    else:
        print(f"not ingested: run `ff-ingest --config {cfg.source}` to replay the journals into MLflow")

    folder, command = ui_command(cfg, args.port)
    print()
    print("Open the MLflow UI on this store:")
    print()
    if folder is not None:  # always: tools/dev.py runs this from the project root, not the user's folder
        print(f"    cd {shlex.quote(str(folder))}")
    print(f"    {command}")
    print()
    links = _ui_links(cfg, result.run_id, args.port) if not args.no_ingest else None
    if links:
        print("then browse to")
        print(f"    {links[0]}    (the ff-m3-pipeline runs)")
        print(f"    {links[1]}    (this pipeline run)")
    else:
        print(f"then browse to http://127.0.0.1:{args.port}")
    print('(MLflow 3 opens in its GenAI view: "Model training" at the top left shows the runs.)')
    return rc


if __name__ == "__main__":
    sys.exit(main())
