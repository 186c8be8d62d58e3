"""``ff-ingest prune --shipped-to URI``: a shipping host frees its disk of what the destination holds whole.

Journals are written by the real producer and shipped by the real ``ff-ingest ship``; the
destination is a real folder (one case: moto's S3 server) and is changed behind the shipper's
back as an operator or a lifecycle rule would. What is left is checked with plain files, and by
ingesting the destination centrally into a SQLite store.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from tests.central import central, machine
from tests.conftest import subprocess_env
from tests.ship import Remote, cli, cli_json, shipped_name, tracker
from tests.ship.test_ship_processes import BLOCKER

HOST = "node-p"


def ended(project: Path, name: str, metrics: int = 60, artifact: bool = False) -> Path:
    """An ended run (``metrics`` points of ``loss``, one real artifact if asked); its journal."""
    with tracker(project).start_run(run_name=name) as run:
        run.log_param("name", name)
        for i in range(metrics):
            run.log_metric("loss", 1.0 / (i + 1), step=i)
        if artifact:
            src = project / f"{name}.txt"
            src.write_text(f"artifact of {name}\n" * 50)
            run.log_artifact(src)
    return Path(run.journal_path)


def ship(project: Path, dest: str, *args: str) -> None:
    assert cli(project, "ship", "--to", dest, "--host", HOST, "-q", *args) == 0


def prune(project: Path, dest: str, capsys, *args: str) -> tuple[int, dict]:
    return cli_json(project, capsys, "prune", "--shipped-to", dest, *args)


def reasons(out: dict) -> dict[str, str]:
    return {Path(k["path"]).name: k["reason"] for k in out["kept"]}


def taken(out: dict) -> set[str]:
    return {Path(t["path"]).name for t in out["taken"]}


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_shipped_ended_idle_journals_go_and_a_central_ingest_still_has_every_record(project, tmp_path,
                                                                                    template_store, capsys):
    """Dry run: nothing changes. Then both journals go (the destination and the ship state untouched), and
    the destination ingested centrally gives both runs whole: every metric point, param and artifact."""
    from mlflow.tracking import MlflowClient

    share = tmp_path / "share"
    share.mkdir()
    journals = [ended(project, "a", metrics=150, artifact=True), ended(project, "b", metrics=80)]
    ship(project, str(share))
    state = project / "data" / "mlflow" / "ingest" / "ship"
    before = (files_under(share), files_under(state), {j: j.read_bytes() for j in journals})

    code, out = prune(project, str(share), capsys)  # default --older-than 7d
    assert code == 0 and taken(out) == set() and len(out["kept"]) == 2
    assert all(r.startswith("recent: idle ") and r.endswith("less than 604800s") for r in reasons(out).values())
    code, out = prune(project, str(share), capsys, "--older-than", "0", "--dry-run")
    assert code == 0 and out["dry_run"] and taken(out) == {j.name for j in journals} and out["kept"] == []
    assert (files_under(share), files_under(state), {j: j.read_bytes() for j in journals}) == before

    code, out = prune(project, str(share), capsys, "--older-than", "0")
    assert code == 0 and taken(out) == {j.name for j in journals} and out["kept"] == [] and out["failed"] == []
    assert out["shipped_to"] == str(share) and out["bytes_freed"] == sum(len(b) for b in before[2].values())
    assert not any(j.exists() for j in journals)
    assert files_under(share) == before[0] and files_under(state) == before[1]
    assert all(j.parent.is_dir() for j in journals)  # journal files only: never a folder

    hub = machine(tmp_path / "hub")
    db = hub / "data" / "mlflow" / "mlruns.db"
    db.parent.mkdir(parents=True)
    shutil.copy(template_store, db)
    assert central(hub, str(share), f"sqlite:///{db}", "-q") == 0
    client = MlflowClient(f"sqlite:///{db}")
    runs = {r.data.tags["ff.run_id"]: r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()])}
    assert set(runs) == {j.name.split(".")[0] for j in journals}
    for journal, points in zip(journals, (150, 80)):
        run = runs[journal.name.split(".")[0]]
        assert run.info.status == "FINISHED" and run.data.params["name"] == run.info.run_name
        assert len(client.get_metric_history(run.info.run_id, "loss")) == points
    assert [a.path for a in client.list_artifacts(runs[journals[0].name.split(".")[0]].info.run_id)] == ["a.txt"]


def test_what_the_destination_does_not_hold_whole_stays_with_its_reason(project, tmp_path, capsys):
    """Lagging, never shipped, not ended, a segment missing at the destination, held: each kept with its
    reason. Once shipped (and let go), the lagging, the new and the held one go; the gap and the open run stay."""
    share = tmp_path / "share"
    share.mkdir()
    growing = tracker(project).start_run(run_name="growing")
    live = tracker(project).start_run(run_name="live")
    try:
        for i in range(40):
            growing.log_metric("x", i, step=i)
            live.log_metric("x", i, step=i)
        gap, held = ended(project, "gap", metrics=120), ended(project, "held")
        ship(project, str(share), "--segment-bytes", "3000")
        lagging, shipped_to = Path(growing.journal_path), Path(growing.journal_path).stat().st_size
        growing.end()  # its run_end is not shipped
        never = ended(project, "never")
        seg_dir = share / "journals" / shipped_name(project, gap, HOST)
        segments = sorted(seg_dir.iterdir())
        assert len(segments) >= 3
        segments[1].unlink()  # lost at the destination (a hand, a lifecycle rule)
        with open(held, "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # as its producer does while it writes
            code, out = prune(project, str(share), capsys, "--older-than", "0")
            why = reasons(out)
            assert code == 0 and out["taken"] == []
            assert why[lagging.name] == f"lagging: shipped to byte {shipped_to} of {lagging.stat().st_size}"
            assert why[never.name].startswith(f"not shipped: this host has no ship state of it for {share}")
            assert why[Path(live.journal_path).name].startswith("not ended: its last record is metric")
            assert why[gap.name] == (f"not shipped: {seg_dir}/: no segment starts at byte "
                                     f"{int(segments[1].name.split('.')[0])}")
            assert why[held.name].startswith("held: ")
            assert all(Path(k["path"]).exists() for k in out["kept"])
        ship(project, str(share))  # ships what is new: the lagging tail and the new journal, not the gap
        code, out = prune(project, str(share), capsys, "--older-than", "0")
        assert code == 0 and taken(out) == {lagging.name, never.name, held.name}
        assert set(reasons(out)) == {gap.name, Path(live.journal_path).name}
    finally:
        live.end()


def test_a_destination_made_again_holds_none_of_what_was_shipped(project, tmp_path, capsys):
    """Wiped and made again under the same name (another id in ff-ship.json), even with our segments restored
    into it, the destination is not the one this host shipped to: kept. Shipped again, it goes."""
    share = tmp_path / "share"
    share.mkdir()
    journal = ended(project, "r")
    ship(project, str(share))
    saved = share.with_name("backup")
    shutil.copytree(share, saved)
    shutil.rmtree(share)
    share.mkdir()
    new_id = uuid.uuid4().hex
    (share / "ff-ship.json").write_text(json.dumps({"format": "ff-ship", "version": 1, "id": new_id}))
    shutil.copytree(saved / "journals", share / "journals")
    code, out = prune(project, str(share), capsys, "--older-than", "0")
    assert code == 0 and out["taken"] == []
    assert reasons(out)[journal.name].startswith(f"not shipped: {share} was made again since this host shipped")
    assert new_id in reasons(out)[journal.name] and journal.exists()
    ship(project, str(share))  # the shipper takes the new destination's chain as it finds it
    code, out = prune(project, str(share), capsys, "--older-than", "0")
    assert code == 0 and taken(out) == {journal.name} and not journal.exists()


def test_archive_writes_the_journal_gzipped_under_its_root_path(project, tmp_path, capsys):
    share, archive = tmp_path / "share", tmp_path / "archive"
    share.mkdir()
    journal = ended(project, "r")
    data = journal.read_bytes()
    ship(project, str(share))
    code, out = prune(project, str(share), capsys, "--older-than", "0", "--archive", str(archive))
    target = archive / (journal.relative_to(project / "data" / "runs").as_posix() + ".gz")
    assert code == 0 and out["taken"][0]["archived_to"] == str(target)
    assert gzip.decompress(target.read_bytes()) == data and not journal.exists()


def test_an_archived_journal_is_judged_by_its_plain_bytes(project, tmp_path, capsys):
    """A ``.jsonl.gz`` journal under a root ships decompressed; prune compares the chain with its uncompressed
    size and reads its last record through the gzip stream."""
    share = tmp_path / "share"
    share.mkdir()
    journal = ended(project, "r", metrics=300)
    archived = journal.with_name(journal.name + ".gz")
    archived.write_bytes(gzip.compress(journal.read_bytes()))
    journal.unlink()
    ship(project, str(share), "--segment-bytes", "4000")
    code, out = prune(project, str(share), capsys, "--older-than", "0", "--dry-run")
    assert code == 0 and taken(out) == {archived.name}
    assert out["taken"][0]["bytes"] == archived.stat().st_size  # what it frees: the bytes on disk
    last = sorted((share / "journals" / shipped_name(project, journal, HOST)).iterdir())[-1]
    last.unlink()  # the chain now ends before the file's content does
    code, out = prune(project, str(share), capsys, "--older-than", "0")
    assert reasons(out)[archived.name] == (f"lagging: shipped to byte {int(last.name.split('.')[0])} of "
                                           f"{len(gzip.decompress(archived.read_bytes()))}")


def test_s3_destination_and_an_unmounted_share(project, tmp_path, s3_uri, moto_s3, capsys):
    """S3: the shipped journal goes, the one never shipped stays; the destination keeps every object.
    A share that is not mounted: exit 3 naming it, nothing removed."""
    dest = Remote(s3_uri, s3=moto_s3)
    shipped = ended(project, "s3", artifact=True)
    ship(project, s3_uri)
    objects = dest.objects()
    never = ended(project, "later")
    code, out = prune(project, s3_uri, capsys, "--older-than", "0")
    assert code == 0 and taken(out) == {shipped.name} and set(reasons(out)) == {never.name}
    assert not shipped.exists() and never.exists() and dest.objects() == objects

    share = tmp_path / "share"
    share.mkdir()
    ship(project, str(share))
    share.rename(tmp_path / "away")
    capsys.readouterr()
    assert cli(project, "prune", "--shipped-to", str(share), "--older-than", "0") == 3
    err = capsys.readouterr().err
    assert f"{share}: no such folder" in err and len(err.strip().splitlines()) == 1
    assert never.exists()


def test_prune_shipped_needs_neither_mlflow_nor_sqlalchemy(project, tmp_path):
    """The compute-node install: ``prune --shipped-to`` works with MLflow and SQLAlchemy unimportable;
    a plain ``prune`` (a store's checkpoints) there says what to install (exit 4)."""
    share = tmp_path / "share"
    share.mkdir()
    journal = ended(project, "r")
    ship(project, str(share))
    config = ["--config", str(project / "config" / "mlflow.yaml")]
    done = subprocess.run([sys.executable, "-c", BLOCKER, "prune", "--shipped-to", str(share), "--older-than", "0",
                           *config], cwd=project, env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "LEAKED []" in done.stderr and "1 journals deleted" in done.stdout and not journal.exists()
    done = subprocess.run([sys.executable, "-c", BLOCKER, "prune", *config], cwd=project, env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 4 and "pip install 'formula-foundry[tracking]'" in done.stderr
