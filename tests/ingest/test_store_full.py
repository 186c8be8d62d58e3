"""A store whose disk fills up is a store problem (exit 3, nothing lost), not the journals' (exit 1).

The store folder is a real, tiny tmpfs (``mount -t tmpfs -o size=...``); SQLite answers
"database or disk is full". Needs the right to mount (root in the CI container); skips otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_ff_ingest
from tests.ingest import dump_store, reference_project, tracker


@pytest.fixture
def tiny_store(project: Path, template_store: Path):
    """``project``'s data/mlflow on a tmpfs just larger than an empty store; yields a resize function."""
    folder = project / "data" / "mlflow"
    folder.mkdir(parents=True)
    size = template_store.stat().st_size + (96 << 10)
    probe = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({probe.stderr.strip() or probe.returncode}): needs root")
    shutil.copy(template_store, folder / "mlruns.db")

    def resize(new_size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new_size}", str(folder)], check=True)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize("sink", ["api", "bulk"])
def test_a_full_store_disk_exits_3_and_a_rerun_after_space_is_freed_completes(sink, project, tiny_store,
                                                                             template_store, tmp_path, capsys):
    t = tracker(project)
    for r in range(3):
        with t.start_run(f"r{r}", experiment_name="full") as run:
            run.log_params({f"p{i}": "x" * 200 for i in range(50)})
            for i in range(3000):
                run.log_metric(f"m{i % 7}", float(i), step=i)
    capsys.readouterr()
    assert run_ff_ingest(project, "--sink", sink, "-q") == 3
    err = capsys.readouterr().err
    assert err.startswith("tracking store unavailable: ") and "full" in err and "nothing is lost" in err
    assert "Traceback" not in err
    tiny_store(64 << 20)
    assert run_ff_ingest(project, "--sink", sink, "-q") == 0
    ref = reference_project(tmp_path, project, template_store)
    assert run_ff_ingest(ref, "--sink", sink, "-q") == 0
    assert dump_store(project) == dump_store(ref)
