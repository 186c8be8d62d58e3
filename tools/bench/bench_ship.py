"""Ship throughput: ``ff-ingest ship --to s3://...`` vs a plain boto3 upload of the same bytes.

The data: ``JOURNALS`` journals of metric records (``MB`` in all, written by the real
``JournalWriter``) and ``BLOBS`` artifact blobs of ``BLOB_KIB`` KiB in the
content-addressed store, each named by an ``artifact`` record. The destination is
moto's S3 server (a subprocess on 127.0.0.1, like the tests'), a fresh prefix per run.

* ``ff-ingest ship``: what the command runs, called in a fresh child
  (:class:`~formula_foundry.tracking.ingest.ship.shipper.Shipper` over
  ``S3Objects``): discovery, every record verified (checksum, sequence) on the
  way, blobs first (HEAD, sha256 checked while read, create-if-absent, 8 threads),
  then each journal as create-if-absent segments, a durable state write after each.
* ``boto3 upload_file``: the same files (each journal whole, each blob) with one
  ``client.upload_file`` each, one after the other: what a script would do, with no
  verification, no resumability and nothing about torn tails.
* ``boto3 upload_file, 8 threads``: the same through a pool of 8 threads.

Each option runs in its own child after a warm-up upload of a small file; the
order rotates per round. MB/s counts journal bytes plus blob bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Row, Stats, emit, progress, run_child, write_project

SECTION = "ship"
JOURNALS = 8
MB = 64
QUICK_MB = 16
BLOBS = 200
BLOB_KIB = 100
REPEATS = 5
QUICK_REPEATS = 3
BUCKET = "ff-bench"
S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
MODES = {"ours": "ff-ingest ship (S3, moto)", "boto3": "boto3 upload_file, one by one",
         "boto3-8": "boto3 upload_file, 8 threads"}


# --------------------------------------------------------------------------- data

def make_data(folder: Path, *, total_mb: int, journals: int, blobs: int, blob_kib: int, seed: int = 17) -> Path:
    """A project under ``folder`` with the journals and blobs; returns its config path."""
    from formula_foundry.substrate import ArtifactStore
    from formula_foundry.tracking.journal import JournalWriter

    config = write_project(folder, fsync="never")
    config.write_text(config.read_text().replace(
        "journal:\n", f"journal:\n  artifact_store: \"{folder / 'artifacts'}\"\n", 1))
    store = ArtifactStore(folder / "artifacts")
    rng = random.Random(seed)
    per_journal = total_mb * 1_000_000 // journals
    blob_no = 0
    for j in range(journals):
        run_id = uuid.UUID(int=rng.getrandbits(128)).hex
        journal_id = uuid.UUID(int=rng.getrandbits(128)).hex[:16]
        path = folder / "runs" / f"bench-{j:02d}" / "tracking" / f"{run_id}.{journal_id}.jsonl"
        writer = JournalWriter(path, fsync="never")
        writer.append("run_start", {"run_id": run_id, "journal_id": journal_id, "experiment": "bench",
                                    "run_name": f"bench-{j}", "tags": {}})
        step = 0
        while path.stat().st_size < per_journal:
            for _ in range(1000):
                writer.append("metric", {"key": "loss", "value": rng.random(), "step": step})
                step += 1
            if blob_no < blobs * (j + 1) // journals:
                blob_no = _blob(writer, store, rng, blob_no, blob_kib)
        while blob_no < blobs * (j + 1) // journals:
            blob_no = _blob(writer, store, rng, blob_no, blob_kib)
        writer.append("run_end", {"status": "FINISHED"})
        writer.close()
    return config


def _blob(writer, store, rng: random.Random, n: int, kib: int) -> int:
    """A random blob into the store and its ``artifact`` record into the journal; the next blob number."""
    entry = store.add_bytes(rng.randbytes(kib << 10), logical_path=f"b{n}.bin")
    writer.append("artifact", {"path": f"files/b{n}.bin", "digest": entry.digest, "size_bytes": entry.size_bytes,
                               "store_uri": store.root.as_uri(), "media_type": None})
    return n + 1


def data_files(folder: Path) -> list[Path]:
    blobs = sorted(p for p in (folder / "artifacts" / "objects").rglob("*") if p.is_file())
    return sorted((folder / "runs").glob("*/tracking/*.jsonl")) + blobs


# --------------------------------------------------------------------------- moto

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def moto_server(log: Path):
    """moto's S3 server in its own process group; yields its endpoint. The bucket exists."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, **S3_ENV}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, **_creds()).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(timeout=10)


def _creds() -> dict:
    return {"region_name": "us-east-1", "aws_access_key_id": "bench", "aws_secret_access_key": "bench"}


# --------------------------------------------------------------------------- the child

def child_ship(args: argparse.Namespace) -> dict:
    """One timed upload of the data in ``args.project`` to a fresh prefix, by ``args.mode``."""
    import boto3

    os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": args.endpoint})
    folder = Path(args.project)
    files = data_files(folder)
    total = sum(f.stat().st_size for f in files)
    prefix = f"{args.mode}-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=args.endpoint, **_creds())
    warm = folder / "warm.bin"
    warm.write_bytes(b"w" * 1000)
    client.upload_file(str(warm), BUCKET, f"{prefix}-warm/w")  # connections and credentials resolved
    if args.mode == "ours":
        from formula_foundry.tracking import load_config
        from formula_foundry.tracking.ingest.objects import open_objects
        from formula_foundry.tracking.ingest.ship.shipper import Shipper
        from formula_foundry.tracking.ingest.ship.state import ShipState

        cfg = load_config(folder / "config" / "mlflow.yaml")
        objects = open_objects(f"s3://{BUCKET}/{prefix}")
        objects.head("warm")
        state = ShipState(folder / "state" / prefix, destination=objects.display_uri)
        with state, Shipper(objects, state, host="bench", roots=cfg.journal_roots,
                            blob_roots=(cfg.journal.artifact_store,)) as shipper:
            start = time.perf_counter()
            report = shipper.ship_pass()
            seconds = time.perf_counter() - start
        totals = report.totals()
        if not report.ok or totals["bytes"] + totals["blob_bytes"] != total:
            raise RuntimeError(f"ship incomplete: {totals}")
        objects_written = totals["segments"] + totals["blobs"]
    else:
        keys = [(str(f), f"{prefix}/{f.relative_to(folder).as_posix()}") for f in files]
        start = time.perf_counter()
        if args.mode == "boto3":
            for name, key in keys:
                client.upload_file(name, BUCKET, key)
        else:
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda item: client.upload_file(item[0], BUCKET, item[1]), keys))
        seconds = time.perf_counter() - start
        objects_written = len(keys)
    return {"mode": args.mode, "seconds": seconds, "bytes": total, "objects": objects_written}


# --------------------------------------------------------------------------- the section

def run(*, quick: bool, work: Path, template: Path | None = None, total_mb: int | None = None,
        repeats: int | None = None) -> list[Row]:
    del template  # no MLflow store here
    repeats = repeats or (QUICK_REPEATS if quick else REPEATS)
    total_mb = total_mb or (QUICK_MB if quick else MB)
    work.mkdir(parents=True, exist_ok=True)
    progress(f"{SECTION}: writing {JOURNALS} journals ({total_mb} MB) and {BLOBS} blobs of {BLOB_KIB} KiB")
    make_data(work / "data", total_mb=total_mb, journals=JOURNALS, blobs=BLOBS, blob_kib=BLOB_KIB)
    files = data_files(work / "data")
    total = sum(f.stat().st_size for f in files)
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with moto_server(work / "moto.log") as endpoint:
        modes = list(MODES)
        for r in range(repeats):
            for mode in modes[r % len(modes):] + modes[: r % len(modes)]:
                progress(f"{SECTION}: {mode}, run {r + 1} of {repeats}")
                results[mode].append(run_child("bench_ship", ["ship", "--mode", mode, "--project",
                                                              str(work / "data"), "--endpoint", endpoint]))
    rows: list[Row] = []
    rates: dict[str, Stats] = {}
    for mode, option in MODES.items():
        seconds = Stats.of([res["seconds"] for res in results[mode]])
        rate = rates[mode] = Stats.of([total / 1e6 / s for s in seconds.values])
        rows.append(Row(SECTION, option, f"{rate.median:,.1f} MB/s", f"{rate.lo:,.1f} – {rate.hi:,.1f} MB/s",
                        f"{rate.runs} × {total / 1e6:,.1f} MB",
                        f"{seconds.median:.2f} s; {results[mode][0]['objects']} objects ({len(files) - BLOBS} "
                        f"journals + {BLOBS} blobs of {BLOB_KIB} KiB)",
                        samples={"seconds": list(seconds.values), "mb_per_s": list(rate.values)}))
    for bare in ("boto3", "boto3-8"):
        paired = Stats.of([o / b for o, b in zip(rates["ours"].values, rates[bare].values, strict=True)])
        rows.append(Row(SECTION, f"ship vs {MODES[bare]}", f"{paired.median:.2f}×",
                        f"{paired.lo:.2f} – {paired.hi:.2f}× (paired runs)", "",
                        "ship verifies every record and blob, never sends a torn tail and resumes after a kill",
                        samples={"ratio": list(paired.values)}))
    return rows


# --------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    child = sub.add_parser("child", help="internal: one timed upload in a fresh interpreter")
    child.add_argument("what", choices=["ship"])
    child.add_argument("--mode", choices=list(MODES), required=True)
    child.add_argument("--project", required=True)
    child.add_argument("--endpoint", required=True)
    standalone = sub.add_parser("run", help="run this benchmark alone and print its rows")
    standalone.add_argument("--quick", action="store_true")
    standalone.add_argument("--mb", type=int, default=None, help=f"journal megabytes (default {MB}; quick {QUICK_MB})")
    standalone.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    if args.cmd == "child":
        emit(child_ship(args))
        return 0
    import tempfile

    from common import table

    with tempfile.TemporaryDirectory(prefix="ff-bench-ship-") as tmp:
        rows = run(quick=getattr(args, "quick", False), work=Path(tmp), total_mb=getattr(args, "mb", None),
                   repeats=getattr(args, "repeats", None))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
