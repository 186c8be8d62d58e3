"""Helpers of the shipper's tests: journals written by the real producer, and a destination read back
without the code under test (plain files for a folder, raw boto3 for S3)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, subprocess_env

SEG = ".seg"


def tracker(project: Path):
    from formula_foundry.tracking import Tracker, load_config

    return Tracker(load_config(project / "config" / "mlflow.yaml"))


def make_runs(project: Path, *, runs: int = 2, metrics: int = 300, artifacts: int = 1, artifact_bytes: int = 3000,
              tag: str = "") -> list[Path]:
    """``runs`` ended runs with ``metrics`` metrics and ``artifacts`` real artifacts each; their journals."""
    t = tracker(project)
    src = project / "src-files"
    src.mkdir(exist_ok=True)
    for r in range(runs):
        with t.start_run(run_name=f"run{tag}{r}") as run:
            run.log_param("r", r)
            for i in range(metrics):
                run.log_metric("loss", 1.0 / (i + 1), step=i)
                if artifacts and i % max(1, metrics // artifacts) == 0:
                    f = src / f"a{tag}-{r}-{i}.bin"
                    f.write_bytes(os.urandom(artifact_bytes))
                    run.log_artifact(f)
    return journals_of(project)


def journals_of(project: Path) -> list[Path]:
    return sorted((project / "data" / "runs").glob("*/tracking/*.jsonl"))


def cli(project: Path, *args: str) -> int:
    """``ff-ingest`` in this process against ``project``'s config."""
    from formula_foundry.tracking.ingest.cli import main

    return main([*args, "--config", str(project / "config" / "mlflow.yaml")])


def cli_json(project: Path, capsys, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = cli(project, *args, "--json")
    return code, json.loads(capsys.readouterr().out)


def ship_argv(project: Path, dest: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "formula_foundry.tracking.ingest.cli", "ship", "--to", dest,
            "--config", str(project / "config" / "mlflow.yaml"), *args]


def run_ship(project: Path, dest: str, *args: str, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(ship_argv(project, dest, *args), cwd=project, env=env or subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


class Remote:
    """A destination as plain objects: a folder's files, or an S3 prefix through raw boto3."""

    def __init__(self, dest: str, s3=None) -> None:
        self.dest = dest
        self.s3 = s3  # MotoS3 for s3:// destinations
        if dest.startswith("s3://"):
            self.bucket, _, self.prefix = dest[5:].partition("/")
        else:
            self.root = Path(dest)

    @functools.cached_property
    def client(self):
        return self.s3.client()

    def objects(self) -> dict[str, int]:
        """key -> size of every object (temp files of a folder excluded)."""
        if self.s3 is not None:
            out, kwargs = {}, {"Bucket": self.bucket, "Prefix": self.prefix + "/"}
            while True:
                page = self.client.list_objects_v2(**kwargs)
                out.update({item["Key"][len(self.prefix) + 1:]: item["Size"] for item in page.get("Contents", [])})
                if not page.get("IsTruncated"):
                    return out
                kwargs["ContinuationToken"] = page["NextContinuationToken"]
        if not self.root.is_dir():
            return {}
        return {p.relative_to(self.root).as_posix(): p.stat().st_size for p in self.root.rglob("*")
                if p.is_file() and not p.relative_to(self.root).as_posix().startswith(".ff-tmp/")}

    def get(self, key: str) -> bytes:
        if self.s3 is not None:
            return self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")["Body"].read()
        return (self.root / key).read_bytes()

    def segments(self) -> dict[str, list[tuple[int, int]]]:
        """journal name (host/rel) -> [(start, size)] in start order."""
        found: dict[str, list[tuple[int, int]]] = {}
        for key, size in self.objects().items():
            if key.startswith("journals/") and key.endswith(SEG):
                name, _, seg = key[len("journals/"):].rpartition("/")
                found.setdefault(name, []).append((int(seg[: -len(SEG)]), size))
        return {name: sorted(segs) for name, segs in found.items()}

    def journal_bytes(self, name: str) -> bytes:
        """The concatenation of a journal's segments; asserts they chain from 0 with no gap or overlap."""
        out = bytearray()
        for start, size in self.segments()[name]:
            assert start == len(out), f"{name}: segment at {start}, previous ones end at {len(out)}"
            data = self.get(f"journals/{name}/{start:020d}{SEG}")
            assert len(data) == size
            out += data
        return bytes(out)

    def blobs(self) -> set[str]:
        return {key.rpartition("/")[2] for key in self.objects() if key.startswith("blobs/sha256/")}


def shipped_name(project: Path, journal: Path, host: str) -> str:
    """``host/<rel>``: how ``journal`` (under ``project``'s ``data/runs``) is named in a destination."""
    return f"{host}/{journal.relative_to(project / 'data' / 'runs').as_posix()}"


def digests_in(data: bytes) -> set[str]:
    """The blobs named by the ``artifact`` records in ``data`` (whole journal lines)."""
    out = set()
    for line in data.splitlines():
        if b'"type":"artifact"' in line:
            out.add(json.loads(line)["digest"])
    return out


__all__ = ["REPO", "Remote", "cli", "cli_json", "digests_in", "journals_of", "make_runs", "run_ship", "ship_argv",
           "shipped_name", "tracker"]
