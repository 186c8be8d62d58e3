"""One unchanged MLflow script, run by the drop-in tests once per tracking URI (a subprocess each).

``python dropin_script.py OUT_JSON [--no-autolog] [--loop N]`` logs experiments, nested runs,
params, metric histories (NaN, ±inf), tags (one deleted), a dataset, artifacts of every kind, a
failing run, a client-API run ended KILLED and a scikit-learn autolog run; then writes
``{run name: run id}`` to OUT_JSON. ``--loop N`` instead logs N metric points in one run and
prints each step once its call returned (the SIGKILL test).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient


def loop(n: int) -> None:
    mlflow.set_experiment("dropin-loop")
    with mlflow.start_run(run_name="loop") as run:
        print(run.info.run_id, flush=True)
        mlflow.log_param("n", n)
        for step in range(n):
            mlflow.log_metric("x", step * 0.5, step=step)
            print(step, flush=True)


def main(out: Path, autolog: bool) -> None:
    ids: dict[str, str] = {}
    mlflow.set_experiment("dropin-a")
    with mlflow.start_run(run_name="parent", tags={"team": "sim"}, description="the parent run") as parent:
        ids["parent"] = parent.info.run_id
        mlflow.log_params({"lr": 0.01, "layers": 4, "opts": {"a": 1}})
        mlflow.log_param("optimizer", "adam")
        for step in range(40):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_metrics({"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "zero": -0.0}, step=3)
        mlflow.log_metric("loss", 0.5, step=7)  # a second value at one step: both kept
        mlflow.set_tags({"stage": "fit", "tmp": "gone"})
        mlflow.set_tag("stage", "eval")
        mlflow.delete_tag("tmp")
        mlflow.log_input(mlflow.data.from_numpy(np.arange(12).reshape(4, 3), name="grid"), context="training")
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "report.txt").write_text("report\n")
            Path(tmp, "sub").mkdir()
            Path(tmp, "sub", "a.bin").write_bytes(bytes(range(256)))
            Path(tmp, "sub", "empty").write_bytes(b"")
            mlflow.log_artifact(str(Path(tmp, "report.txt")))
            mlflow.log_artifact(str(Path(tmp, "report.txt")), artifact_path="copies")
            mlflow.log_artifacts(tmp, artifact_path="tree")
        mlflow.log_dict({"b": [1, 2], "a": "x"}, "cfg/config.json")
        mlflow.log_dict({"k": 1}, "cfg/config.yaml")
        mlflow.log_text("hello\nworld", "notes/hello.txt")
        mlflow.log_image(np.arange(48, dtype=np.uint8).reshape(4, 4, 3), "images/im.png")
        mlflow.log_table({"a": [1, 2], "b": ["x", "y"]}, artifact_file="tables/t.json")
        mlflow.log_table({"a": [3], "b": ["z"]}, artifact_file="tables/t.json")  # appends: reads it back
        for i in range(2):
            with mlflow.start_run(run_name=f"child-{i}", nested=True) as child:
                ids[f"child-{i}"] = child.info.run_id
                mlflow.log_metric("child_metric", float(i), step=i)
                with mlflow.start_run(run_name=f"grandchild-{i}", nested=True) as grandchild:
                    ids[f"grandchild-{i}"] = grandchild.info.run_id
                    mlflow.log_param("depth", 2)

    mlflow.set_experiment("dropin-b")
    try:
        with mlflow.start_run(run_name="failing") as failing:
            ids["failing"] = failing.info.run_id
            mlflow.log_metric("before_failure", 1.0)
            raise RuntimeError("solver diverged")
    except RuntimeError:
        pass
    client = MlflowClient()
    experiment = mlflow.get_experiment_by_name("dropin-b")
    run = client.create_run(experiment.experiment_id, run_name="client-run", tags={"via": "client"})
    ids["client-run"] = run.info.run_id
    client.log_batch(run.info.run_id, metrics=[mlflow.entities.Metric("m", v, 1_700_000_000_000 + v, v)
                                                for v in range(5)])
    client.set_terminated(run.info.run_id, "KILLED")

    if autolog:
        from sklearn.linear_model import LogisticRegression

        mlflow.set_experiment("dropin-autolog")
        mlflow.sklearn.autolog(log_models=True, log_datasets=True, silent=True)
        rng = np.random.RandomState(0)
        X = rng.rand(60, 3)
        y = (X[:, 0] + X[:, 1] > 1).astype(int)
        with mlflow.start_run(run_name="autolog") as auto:
            ids["autolog"] = auto.info.run_id
            LogisticRegression(max_iter=100).fit(X, y)
    out.write_text(json.dumps(ids))


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--loop" in args:
        loop(int(args[args.index("--loop") + 1]))
    else:
        main(Path(args[0]), autolog="--no-autolog" not in args)
