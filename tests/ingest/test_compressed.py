"""Archived (``*.jsonl.gz``) journals read everywhere: reader, discovery, continuity, ingest, status."""

from __future__ import annotations

import gzip
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from formula_foundry.tracking.framing import frame
from formula_foundry.tracking.ingest.continuity import mismatch
from formula_foundry.tracking.ingest.discover import discover, file_size, is_journal, journal_id_of
from formula_foundry.tracking.ingest.sink import Checkpoint
from formula_foundry.tracking.journal import JournalReader, ReadPosition
from tests.ingest import child_env, dump_store, journals_of, store_db, tracker

RUN, JID = "0123456789abcdef0123456789abcdef", "0123456789abcdef"


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def compress(path: Path) -> Path:
    """Replace ``path`` by ``path.gz`` (as prune --archive does, in place)."""
    target = path.with_name(path.name + ".gz")
    target.write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()
    return target


def test_discovery_and_names_accept_gz(tmp_path: Path):
    """``<run>.<journal>.jsonl.gz`` under tracking/ is a journal, with its journal id; other .gz files are not."""
    folder = tmp_path / "runs" / "r" / "tracking"
    folder.mkdir(parents=True)
    gz = folder / f"{RUN}.{JID}.jsonl.gz"
    gz.write_bytes(gzip.compress(frame({"v": 1, "seq": 0, "ts": 0, "type": "segment_end"})))
    (folder / "notes.txt.gz").write_bytes(gzip.compress(b"x"))
    (folder / f"{RUN}.jsonl.gz").write_bytes(gzip.compress(b"x"))
    assert is_journal(gz) and journal_id_of(gz) == JID
    assert discover([tmp_path / "runs"]) == [gz.resolve()]
    assert file_size(gz) == len(frame({"v": 1, "seq": 0, "ts": 0, "type": "segment_end"}))


def test_reader_reads_gz_as_the_plain_file_from_any_offset(store_project):
    """Same records, offsets and line numbers from a .gz as from the plain journal, also from a checkpoint."""
    with tracker(store_project).start_run("r", experiment_name="gz") as run:
        for i in range(500):
            run.log_metric("m", float(i), step=i)
    plain = list(JournalReader(run.journal_path).entries())
    gz = compress(run.journal_path)
    assert list(JournalReader(gz).entries()) == plain
    assert list(JournalReader(gz).entries(plain[250].end)) == plain[251:]


def test_continuity_names_and_no_truncation_check_for_gz(tmp_path: Path):
    """The .gz suffix does not make a journal 'replaced'; its small on-disk size is not 'truncated'."""
    path = tmp_path / "tracking" / f"{RUN}.{JID}.jsonl.gz"
    cp = Checkpoint(journal_id=JID, path=str(path), run_id=RUN, position=ReadPosition(10_000, 50, 49))
    assert mismatch(path, 100, RUN, JID, cp) is None
    assert mismatch(path, 100, "f" * 32, JID, cp).kind == "replaced"


def test_ingest_from_gz_equals_ingest_from_plain(store_project, template_store, tmp_path):
    """The same journals, compressed, ingest into a fresh store exactly as the plain ones did (bulk sink)."""
    for name in ("a", "b"):
        with tracker(store_project).start_run(name, experiment_name="gz") as run:
            run.log_params({"p": name})
            for i in range(200):
                run.log_metric("m", i / 7, step=i)
    assert subprocess.run([sys.executable, "-m", "formula_foundry.tracking.ingest.cli", "-q", "--config",
                           str(store_project / "config" / "mlflow.yaml")], env=child_env()).returncode == 0
    archive = tmp_path / "arch"
    for path in journals_of(store_project):
        target = archive / path.relative_to(store_project / "data" / "runs")
        target.parent.mkdir(parents=True)
        target.with_name(target.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
    fresh = tmp_path / "fresh"
    (fresh / "config").mkdir(parents=True)
    (fresh / "config" / "mlflow.yaml").write_bytes((store_project / "config" / "mlflow.yaml").read_bytes())
    store_db(fresh).parent.mkdir(parents=True)
    store_db(fresh).write_bytes(template_store.read_bytes())
    cmd = [sys.executable, "-m", "formula_foundry.tracking.ingest.cli", "-q", "--root", str(archive),
           "--config", str(fresh / "config" / "mlflow.yaml")]
    assert subprocess.run(cmd, env=child_env()).returncode == 0
    assert subprocess.run(cmd, env=child_env()).returncode == 0  # exactly once
    assert dump_store(fresh) == dump_store(store_project)


BIG = textwrap.dedent("""
    import gzip, shutil, sys
    from formula_foundry.tracking import Tracker, load_config
    cfg = load_config(sys.argv[1])
    with Tracker(cfg).start_run("big", experiment_name="big") as run:
        for i in range(int(sys.argv[2])):
            run.log_metric("m", i * 0.5, step=i)
    with open(run.journal_path, "rb") as src, gzip.open(str(run.journal_path) + ".gz", "wb", 6) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    run.journal_path.unlink()
""")

MEASURE = textwrap.dedent("""
    import resource, sys
    from formula_foundry.tracking.ingest.cli import main
    code = main(sys.argv[1:])
    print(code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
""")


def _ingest_rss(project: Path, records: int) -> int:
    cfg = str(project / "config" / "mlflow.yaml")
    subprocess.run([sys.executable, "-c", BIG, cfg, str(records)], env=child_env(), check=True)
    out = subprocess.run([sys.executable, "-c", MEASURE, "-q", "--config", cfg], env=child_env(), check=True,
                         capture_output=True, text=True).stdout.split()
    assert out[0] == "0"
    return int(out[1])  # KiB


def test_a_compressed_journal_of_200k_records_ingests_with_flat_memory(project, template_store, tmp_path):
    """200k records from one .gz ingest completely; peak RSS is within 40 MiB of a 20k-record ingest's."""
    import shutil

    projects = []
    for name in ("small", "large"):
        root = tmp_path / name
        shutil.copytree(project, root)
        store_db(root).parent.mkdir(parents=True)
        shutil.copy(template_store, store_db(root))
        projects.append(root)
    small = _ingest_rss(projects[0], 20_000)
    large = _ingest_rss(projects[1], 200_000)
    from tests.conftest import mlflow_client

    client = mlflow_client(projects[1])
    (exp,) = [e for e in client.search_experiments() if e.name == "big"]
    (run,) = client.search_runs([exp.experiment_id])
    assert len(client.get_metric_history(run.info.run_id, "m")) == 200_000
    assert large - small < 40 * 1024, (small, large)


def test_view_reads_a_gz_journal(store_project, capsys):
    """``ff-ingest view`` prints an archived journal's records as it does the plain file's."""
    with tracker(store_project).start_run("v", experiment_name="gz") as run:
        run.log_metric("m", 1.5, step=0)
    from tests.conftest import run_ff_ingest

    capsys.readouterr()
    assert run_ff_ingest(store_project, "view", str(run.journal_path)) == 0
    plain = capsys.readouterr().out
    gz = compress(run.journal_path)
    assert run_ff_ingest(store_project, "view", str(gz)) == 0
    assert capsys.readouterr().out.replace(".jsonl.gz", ".jsonl") == plain
