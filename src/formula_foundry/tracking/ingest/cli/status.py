"""``ff-ingest status [--json]``: where every journal stands, from the files and the checkpoints alone.

Never opens the tracking store (it works while the store is down, and without
MLflow installed): a journal's progress is its checkpoint row (from
:func:`~..stores.connect.open_checkpoints`), its size and content are the file's.

Per journal: the run (producer id and MLflow id), the experiment (from the
header; an attached segment takes its owner's), records in the journal
(complete lines), records ingested, the lag (complete lines and bytes beyond
the checkpoint), the artifact backlog (``artifact`` records beyond the
checkpoint: files and bytes still to upload), the time since the last append,
the state and the last error. States, first match wins:

===========  ===================================================================
``error``    the last ingest stopped at a problem (corrupt line, rejected batch,
             unreadable header); ``last_error`` says which line and why
``missing``  a checkpoint names a file that is gone (a moved or deleted run dir)
``finished`` the journal's end record (run_end / segment_end) is ingested
``waiting``  an attached segment or child run whose owner/parent run is not
             ingested yet
``pending``  complete records not ingested yet (the daemon is behind or not running;
             includes journals never ingested and a header still being written)
``stale``    fully ingested, no end record, no append for ``stale_after_seconds``
             and the producer is not running on this host (it probably died)
``running``  fully ingested, no end record, appended recently (or its producer runs)
===========  ===================================================================

Below the table: the journals' bytes on disk, and what ``ff-ingest prune`` with
its default ``--older-than`` would free now.

With a shipped ``--root`` (``s3://bucket/prefix``, a shipped folder) the journals are
those of this machine's mirror of it (``status`` syncs nothing: the central ingester
does), the API sink's checkpoints are read from the destination, and a ``central``
section adds what the destination holds beyond the mirror (one listing) and who
holds the central lease (:mod:`..lease`). ``--run-id/--experiment/--since/--until``
show only the journals they select (:mod:`..select`).

Exit code: 0, or 1 when at least one journal is in ``error``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import click

from formula_foundry.tracking.config import Config
from formula_foundry.errors import JournalError
from formula_foundry.tracking.framing import FrameError, unframe
from formula_foundry.tracking.ingest.cli.central import shipped_root
from formula_foundry.tracking.ingest.cli.common import common, human_bytes, load, setup_logging
from formula_foundry.tracking.ingest.cli.selection import selection_from, selection_options
from formula_foundry.tracking.ingest.continuity import mismatch
from formula_foundry.tracking.ingest.prune import DEFAULT_OLDER_THAN, Facts, is_held, keep_reason, parse_duration
from formula_foundry.tracking.ingest.select import Selection, select
from formula_foundry.tracking.ingest.discover import discover, journal_id_of
from formula_foundry.tracking.ingest.lease import read_lease
from formula_foundry.tracking.ingest.objects import ObjectStore, ObjectStoreError, open_objects
from formula_foundry.tracking.ingest.ship.mirror import Mirror
from formula_foundry.tracking.ingest.stores.connect import open_checkpoints, state_dir
from formula_foundry.tracking.ingest.stores.lock import LOCK_FILE
from formula_foundry.tracking.ingest.uri import redact, store_key
from formula_foundry.tracking.journal import open_journal_stream
from formula_foundry.tracking.ingest import watch
from formula_foundry.tracking.ingest.sink import Checkpoint

__all__ = ["JournalStatus", "Lag", "StatusReport", "central_status", "collect", "scan_lag", "status_command"]

STATES = ("error", "missing", "finished", "waiting", "pending", "stale", "running")
_CHUNK = 1 << 20
_ARTIFACT = b'"type":"artifact"'  # how the producer's framing spells an artifact record's type (never artifact_ref)


@dataclass(frozen=True)
class JournalStatus:
    path: str
    journal_id: str | None
    kind: str | None  # run_start | run_attach | None (header not readable yet)
    run_id: str | None
    mlflow_run_id: str | None
    experiment: str | None
    run_name: str | None
    records: int  # complete lines in the file
    ingested: int  # records ingested (the checkpoint's count)
    lag_records: int  # complete lines beyond the checkpoint
    lag_bytes: int  # bytes beyond the checkpoint (an incomplete last line included)
    artifacts_pending: int  # artifact records beyond the checkpoint: files still to upload
    artifact_bytes_pending: int  # ... and their bytes
    state: str
    last_error: str | None
    last_append_ms: int | None  # file mtime
    idle_s: float | None
    updated_ms: int | None  # when the checkpoint last moved


@dataclass(frozen=True)
class StatusReport:
    store: str
    checkpoints: str
    daemon_pid: int | None  # pid of the running ingester holding the store's lock, if any
    stale_after_seconds: float
    journals: list[JournalStatus] = field(default_factory=list)
    journal_bytes: int = 0  # bytes of the journal files on disk (archived .gz: compressed)
    prunable_bytes: int = 0  # what ``ff-ingest prune`` (default --older-than) would free now
    prunable: int = 0  # ... in that many journals
    central: dict | None = None  # a shipped root: source, mirror, backlog, lease (see central_status)

    def counts(self) -> dict[str, int]:
        out = {state: 0 for state in STATES}
        for j in self.journals:
            out[j.state] += 1
        return out

    def to_dict(self) -> dict:
        return {"store": self.store, "checkpoints": self.checkpoints,
                "daemon": {"running": self.daemon_pid is not None, "pid": self.daemon_pid},
                "stale_after_seconds": self.stale_after_seconds, "counts": self.counts(),
                "lag_records": sum(j.lag_records for j in self.journals),
                "lag_bytes": sum(j.lag_bytes for j in self.journals),
                "artifacts_pending": sum(j.artifacts_pending for j in self.journals),
                "artifact_bytes_pending": sum(j.artifact_bytes_pending for j in self.journals),
                "disk": {"journal_bytes": self.journal_bytes, "prunable_bytes": self.prunable_bytes,
                         "prunable_journals": self.prunable, "prune_older_than": DEFAULT_OLDER_THAN},
                **({"central": self.central} if self.central is not None else {}),
                "journals": [asdict(j) for j in self.journals]}


# --------------------------------------------------------------------------- reading files

def _header(path: Path) -> tuple[dict | None, str | None]:
    """The verified first record (or None while incomplete), and an error message if it is bad."""
    try:
        with open_journal_stream(path) as fh:
            line = fh.readline()
    except JournalError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"{path}: cannot read: {exc.strerror or exc}"
    if not line.endswith(b"\n"):
        return None, None
    try:
        record = unframe(line[:-1])
    except FrameError as exc:
        return None, f"{path}:1 (byte offset 0): {exc}"
    if record.get("type") not in ("run_start", "run_attach"):
        return None, f"{path}:1 (byte offset 0): first record is {record.get('type')!r}, not run_start/run_attach"
    return record, None


class Lag(NamedTuple):
    """What lies beyond a journal's checkpoint."""

    records: int = 0  # complete lines
    bytes: int = 0  # bytes, an incomplete last line included
    artifacts: int = 0  # complete, verified ``artifact`` records: files to upload
    artifact_bytes: int = 0  # their ``size_bytes``


def scan_lag(path: Path, offset: int) -> Lag:
    """The :class:`Lag` of ``path`` from ``offset`` on, read 1 MiB at a time.

    Cheap: lines are counted, and only those that contain ``"type":"artifact"`` are
    decoded (checksum verified; a corrupt one is not counted).
    """
    lines = size = artifacts = artifact_bytes = 0
    carry = b""  # the incomplete line at the end of the previous chunk
    with open_journal_stream(path) as fh:
        fh.seek(offset)
        while chunk := fh.read(_CHUNK):
            lines += chunk.count(b"\n")
            size += len(chunk)
            data = carry + chunk if carry else chunk
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            start = data.find(_ARTIFACT, 0, cut)
            while start != -1:
                first = data.rfind(b"\n", 0, start) + 1
                end = data.index(b"\n", start)
                try:
                    record = unframe(data[first:end])
                except FrameError:
                    record = {}
                if record.get("type") == "artifact" and type(record.get("size_bytes")) is int:
                    artifacts += 1
                    artifact_bytes += record["size_bytes"]
                start = data.find(_ARTIFACT, end, cut)
    return Lag(lines, size, artifacts, artifact_bytes)


def daemon_pid(folder: Path) -> int | None:
    """The pid of the ingester holding ``<state dir>/ingester.lock``, or None when nobody holds it.

    Read from ``/proc/locks`` (Linux), so the lock is never touched: taking it,
    even for an instant, could make a daemon starting at that moment refuse to
    start. Elsewhere, a shared non-blocking ``flock`` probes it.
    """
    lock = folder / LOCK_FILE
    try:
        st = lock.stat()
    except OSError:
        return None
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        table = None
    if table is not None:
        # "1: FLOCK  ADVISORY  WRITE 8833 fe:00:2146407 0 EOF" (waiters carry "->" and are skipped)
        for line in table.splitlines():
            parts = line.split()
            if len(parts) >= 6 and parts[1] == "FLOCK" and parts[4].isdigit() and \
                    parts[5].rsplit(":", 1)[-1] == str(st.st_ino):
                return int(parts[4])
        return None
    import fcntl

    try:
        with open(lock) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                text = fh.read().strip()
                words = text.split()  # "pid 8833 on host"
                return int(words[1]) if len(words) > 1 and words[0] == "pid" and words[1].isdigit() else -1
            fcntl.flock(fh, fcntl.LOCK_UN)
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------- the report

def collect(cfg: Config, tracking_uri: str | None = None, *, now: float | None = None,
            selection: Selection = Selection()) -> StatusReport:
    """Every journal under the roots and every checkpoint row of the store, with its state.

    With a ``selection``, only the journals it matches (:mod:`..select`; a checkpoint whose file is
    gone is then left out). Also the journals' bytes on disk and what a default prune would free.
    """
    uri = tracking_uri or cfg.tracking.backend_store_uri
    now = time.time() if now is None else now
    store = open_checkpoints(cfg, uri)
    try:
        rows = store.all()
        location = store.location
    finally:
        store.close()
    by_id: dict[str, Checkpoint] = {cp.journal_id: cp for cp in rows}
    paths = discover(cfg.journal_roots)
    seen = {str(p) for p in paths}
    extra = [Path(cp.path) for cp in rows if cp.path not in seen]
    headers: dict[Path, tuple[dict | None, str | None]] = {p: _header(p) for p in [*paths, *extra] if p.exists()}
    if selection:
        chosen = set(select([*paths, *extra], selection, header_of=lambda p: headers.get(p, (None, None))[0]))
        paths, extra = [p for p in paths if p in chosen], [p for p in extra if p in chosen]
    older_than = parse_duration(DEFAULT_OLDER_THAN)
    disk = prunable = prunable_n = 0
    owners = {h["run_id"]: h for h, _ in headers.values() if h and h["type"] == "run_start"}
    ingested_runs = {cp.run_id for cp in rows if cp.mlflow_run_id}
    after = cfg.ingest.watch.stale_after_seconds

    out: list[JournalStatus] = []
    for path in [*paths, *extra]:
        jid = journal_id_of(path)
        cp = by_id.get(jid) if jid else None
        if cp is None:
            cp = next((c for c in rows if c.path == str(path)), None)
        if not path.exists():
            out.append(_row(path, cp, None, None, state="missing", records=cp.position.line - 1 if cp else 0,
                            lag=Lag(), mtime=None, now=now, owners=owners))
            continue
        header, header_error = headers.get(path, (None, None))
        try:
            size, mtime = path.stat().st_size, path.stat().st_mtime
            drift = mismatch(path, size, (header or {}).get("run_id"), (header or {}).get("journal_id"), cp)
            lag = scan_lag(path, cp.position.offset if cp and not drift else 0)
        except OSError:
            out.append(_row(path, cp, header, None, state="missing", records=0, lag=Lag(), mtime=None,
                            now=now, owners=owners))
            continue
        records = (cp.position.line - 1 if cp and not drift else 0) + lag.records
        error = (drift.message if drift else None) or (cp.last_error if cp else None) or header_error
        if error:
            state = "error"
        elif cp is not None and cp.ended:
            state = "finished"
        elif header is not None and lag.records and not (cp and cp.mlflow_run_id) and _waits(header, ingested_runs):
            state = "waiting"
        elif lag.records or header is None:
            state = "pending"
        elif after > 0 and now - mtime >= after and watch.producer_alive(header) is not True:
            state = "stale"
        else:
            state = "running"
        out.append(_row(path, cp, header, error, state=state, records=records, lag=lag, mtime=mtime, now=now,
                        owners=owners))
        disk += size
        if state == "finished" and keep_reason(Facts(path=path, size=size, mtime=mtime, checkpoint=cp, error=error,
                                                     held=is_held(path)), older_than=older_than, now=now) is None:
            prunable += size
            prunable_n += 1
    return StatusReport(store=redact(uri), checkpoints=location, daemon_pid=daemon_pid(state_dir(cfg, uri)),
                        stale_after_seconds=after, journals=out, journal_bytes=disk, prunable_bytes=prunable,
                        prunable=prunable_n)


def _waits(header: dict, ingested_runs: set[str]) -> bool:
    if header["type"] == "run_attach":
        return header["run_id"] not in ingested_runs
    parent = header.get("parent_run_id")
    return bool(parent) and parent not in ingested_runs


def _row(path: Path, cp: Checkpoint | None, header: dict | None, error: str | None, *, state: str, records: int,
         lag: Lag, mtime: float | None, now: float, owners: dict[str, dict]) -> JournalStatus:
    run_id = (header or {}).get("run_id") or (cp.run_id if cp else None)
    owner = header if header and header["type"] == "run_start" else owners.get(run_id or "")
    return JournalStatus(
        path=str(path), journal_id=(header or {}).get("journal_id") or (cp.journal_id if cp else journal_id_of(path)),
        kind=header["type"] if header else None, run_id=run_id, mlflow_run_id=cp.mlflow_run_id if cp else None,
        experiment=(owner or {}).get("experiment"), run_name=(owner or {}).get("run_name"), records=records,
        ingested=cp.records if cp else 0, lag_records=lag.records, lag_bytes=lag.bytes,
        artifacts_pending=lag.artifacts, artifact_bytes_pending=lag.artifact_bytes, state=state,
        last_error=error if state in ("error",) else (cp.last_error if cp else None),
        last_append_ms=int(mtime * 1000) if mtime is not None else None,
        idle_s=round(now - mtime, 1) if mtime is not None else None,
        updated_ms=cp.updated_ms if cp else None)


# --------------------------------------------------------------------------- printing

def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def render_table(report: StatusReport, *, root: Path | None = None) -> str:
    """The human view: one line per journal, errors under their journal, a summary at the end."""
    head = ("STATE", "RUN", "MLFLOW RUN", "EXPERIMENT", "RECORDS", "INGESTED", "LAG", "UPLOADS", "IDLE",
            "JOURNAL")
    rows = []
    for j in sorted(report.journals, key=lambda j: (STATES.index(j.state), j.path)):
        path = j.path
        if root is not None:
            try:
                path = str(Path(j.path).relative_to(root))
            except ValueError:
                pass
        lag = "0" if not j.lag_bytes else f"{j.lag_records} ({human_bytes(j.lag_bytes)})"
        uploads = f"{j.artifacts_pending} ({human_bytes(j.artifact_bytes_pending)})" if j.artifacts_pending else "0"
        rows.append(((j.state, (j.run_id or "-")[:12], (j.mlflow_run_id or "-")[:12], (j.experiment or "-")[:28],
                      str(j.records), str(j.ingested), lag, uploads, _age(j.idle_s), path), j.last_error))
    widths = [max([len(h)] + [len(r[0][i]) for r in rows]) for i, h in enumerate(head)]
    right = {4, 5}

    def fmt(cells) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
                         ).rstrip()

    lines = [fmt(head)]
    for cells, error in rows:
        lines.append(fmt(cells))
        if error:
            lines.append(f"    last error: {error}")
    counts = {k: v for k, v in report.counts().items() if v}
    summary = ", ".join(f"{v} {k}" for k, v in counts.items()) or "no journals"
    daemon = f"running (pid {report.daemon_pid})" if report.daemon_pid else "not running"
    lines.append("")
    files = sum(j.artifacts_pending for j in report.journals)
    uploads = ""
    if files:
        pending = sum(j.artifact_bytes_pending for j in report.journals)
        uploads = f", {files} artifact files ({human_bytes(pending)}) to upload"
    lines.append(f"{len(report.journals)} journals: {summary}; lag {sum(j.lag_records for j in report.journals)} "
                 f"records{uploads}")
    lines.append(f"disk: {human_bytes(report.journal_bytes)} of journals; prune (--older-than {DEFAULT_OLDER_THAN}) "
                 f"would free {human_bytes(report.prunable_bytes)} ({report.prunable} journals)")
    lines.append(f"store: {report.store}; daemon: {daemon}; checkpoints: {report.checkpoints}")
    if report.central is not None:
        lines.append(_central_line(report.central))
    return "\n".join(lines)


def _central_line(central: dict) -> str:
    backlog = central.get("backlog")
    if backlog is None:
        behind = f"not listed ({central.get('error')})"
    else:
        behind = f"{backlog['journals']} journals shipped, " + (
            f"{backlog['unmirrored_journals']} with {human_bytes(backlog['unmirrored_bytes'])} not mirrored yet"
            if backlog["unmirrored_journals"] else "all mirrored")
    lease = central.get("lease")
    if lease is None:
        held = "free (never taken)" if backlog is not None else "unknown"
    elif lease["held"]:
        held = f"held by {lease['holder']} until {lease['expires']}"
    else:
        held = f"free (last held by {lease['holder']})"
    return f"central: {central['source']} -> mirror {central['mirror']}: {behind}; lease: {held}"


def central_status(mirror: Mirror, objects: ObjectStore, tracking_uri: str, *, now: float | None = None) -> dict:
    """The ``central`` section of a shipped root's report: what is not mirrored yet, and the lease."""
    now = time.time() if now is None else now
    out: dict = {"source": objects.display_uri, "mirror": str(mirror.folder), "backlog": None, "lease": None}
    try:
        backlog = mirror.backlog()
        out["backlog"] = {"journals": backlog.journals, "unmirrored_journals": backlog.unmirrored_journals,
                          "unmirrored_bytes": backlog.unmirrored_bytes}
        lease = read_lease(objects, store_key(tracking_uri))
    except ObjectStoreError as exc:
        out["error"] = str(exc)
        return out
    if lease is not None:
        out["lease"] = {"holder": lease.holder, "held": not lease.free(int(now * 1000)),
                        "expires": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(lease.expires_ms / 1000)),
                        "expires_ms": lease.expires_ms, "released": lease.released}
    return out


@click.command(name="status")
@common
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@selection_options
def status_command(config_path, tracking_uri, roots, log_level, as_json, run_ids, experiment, since, until):
    """Per-journal progress: run, experiment, records, ingested, lag, state, last error.

    Reads only the journal files and the checkpoints: works while the tracking
    store is unreachable. Exit code 1 when a journal is in error.
    """
    setup_logging(log_level)
    shipped = shipped_root(roots)
    cfg = load(config_path, () if shipped else roots, tracking_uri)
    selection = selection_from(run_ids, experiment, since, until)
    if shipped:
        uri = tracking_uri or cfg.tracking.backend_store_uri
        with open_objects(shipped) as objects:
            mirror = Mirror.open(objects, cfg.ingest.state_dir)
            report = replace(collect(mirror.info.config(cfg), uri, selection=selection),
                             central=central_status(mirror, objects, uri))
    else:
        report = collect(cfg, tracking_uri, selection=selection)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(render_table(report, root=cfg.project_root))
    return 1 if any(j.state == "error" for j in report.journals) else 0
