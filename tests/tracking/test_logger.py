"""The producer API of seed 001 (get_tracker / start_run / Run) over the journal (REQ-M3-003, -004, -005, -007).

Every seed-001 snippet runs here as written (inside a throw-away project), and the
journal it leaves behind is read back through the real reader.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from formula_foundry.errors import RunStateError, ValidationError
from formula_foundry.substrate import ArtifactStore, DeterminismConfig, Manifest, init_run_dir
from formula_foundry.tracking import NoopRun, get_tracker
from formula_foundry.tracking.journal import JournalReader
from tests.conftest import subprocess_env

GIT_SHA = "0123456789abcdef0123456789abcdef01234567"


def _journals(project: Path) -> list[Path]:
    return sorted(project.glob("data/runs/*/tracking/*.jsonl"))


def _records(path: Path) -> list[dict]:
    return list(JournalReader(path).records())


def _only_journal(project: Path) -> list[dict]:
    (journal,) = _journals(project)
    return _records(journal)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- seed 000's test matrix

def test_log_manifest(in_project: Path, monkeypatch):
    """REQ-M3-003: manifest= puts git_sha, design_doc_sha256, environment_fingerprint,
    determinism_mode and seed_* in the run_start tags, and writes a manifest record."""
    design = in_project / "DESIGN.md"
    design.write_text("# design\n")
    monkeypatch.setenv("FF_GIT_SHA", GIT_SHA)
    monkeypatch.setenv("FF_DESIGN_DOC", str(design))

    # seed 001, "Integrating with Substrate Manifest"
    manifest = Manifest.from_environment(
        determinism=DeterminismConfig(mode="strict", seed=42, cublas_workspace_config=":4096:8")
    )
    tracker = get_tracker()
    with tracker.start_run(run_name="tracked-build", manifest=manifest) as run:
        run.log_metric("some_metric", 42.0)

    records = _records(run.journal_path)
    tags = records[0]["tags"]
    assert tags["git_sha"] == GIT_SHA
    assert tags["design_doc_sha256"] == hashlib.sha256(b"# design\n").hexdigest()
    assert tags["environment_fingerprint"] == manifest.environment_fingerprint
    assert len(tags["environment_fingerprint"]) == 64
    assert tags["determinism_mode"] == "strict"
    assert {k: v for k, v in tags.items() if k.startswith("seed_")} == {
        "seed_python": "42", "seed_numpy": "42", "seed_torch": "42"}
    assert tags["mlflow.source.git.commit"] == GIT_SHA
    assert records[1]["type"] == "manifest"
    assert records[1]["manifest"] == manifest.to_dict()
    assert records[1]["manifest"]["cublas_workspace_config"] == ":4096:8"


def test_run_artifacts_linkage(in_project: Path):
    """REQ-M3-004: the journal lives in run_artifacts.run_dir/tracking; tags substrate_run_id/_dir."""
    # seed 001, "Linking to Substrate RunArtifacts"
    run_artifacts = init_run_dir(run_root=Path("data/runs"), run_id="run-001")

    tracker = get_tracker()

    with tracker.start_run(
        run_name="linked-run",
        run_artifacts=run_artifacts,
    ) as run:
        run.log_metric("pipeline_stage", 1)

    assert run.journal_path.parent == run_artifacts.tracking_dir
    assert _journals(in_project) == [run.journal_path]  # no second run dir was made
    tags = _records(run.journal_path)[0]["tags"]
    assert tags["substrate_run_id"] == "run-001"
    assert tags["substrate_run_dir"] == str((in_project / "data" / "runs" / "run-001").resolve())


def test_artifact_reference(in_project: Path):
    """REQ-M3-005: an artifact_ref record with logical path, digest and size; nothing is copied."""
    content = os.urandom(256 * 1024)
    Path("output").mkdir()
    Path("output/coupon.kicad_pcb").write_bytes(content)

    # seed 001, "Logging Artifact References"
    store = ArtifactStore(root=Path("data/artifacts"))
    entry = store.add_file(Path("output/coupon.kicad_pcb"), logical_path="coupon.kicad_pcb")
    tracker = get_tracker()
    with tracker.start_run(run_name="artifact-run") as run:
        run.log_artifact_reference(
            logical_path=entry.path,
            digest=entry.digest,
            size_bytes=entry.size_bytes,
        )

    (ref,) = [r for r in _records(run.journal_path) if r["type"] == "artifact_ref"]
    assert ref["logical_path"] == "coupon.kicad_pcb"
    assert ref["digest"] == hashlib.sha256(content).hexdigest()
    assert ref["size_bytes"] == len(content)
    # Nothing copied: the content exists only as the source file and the store's blob.
    holders = [p for p in _files(in_project) if p.stat().st_size >= len(content) and p.read_bytes() == content]
    assert sorted(holders) == sorted([in_project / "output" / "coupon.kicad_pcb", store.path_for(entry.digest)])
    assert sum(p.stat().st_size for p in _files(run.run_dir)) < 4096
    assert not (in_project / "data" / "mlflow").exists()  # the producer never touches the MLflow store


# seed 001's "Starting a Tracked Run", run where `import mlflow` fails.
BASIC_EXAMPLE = """
from formula_foundry.tracking import get_tracker

tracker = get_tracker()

with tracker.start_run(run_name="my-coupon-build") as run:
    # Log parameters
    run.log_param("coupon_family", "F1_SINGLE_ENDED_VIA")
    run.log_param("fab_profile", "oshpark_4layer")

    # Log metrics
    run.log_metric("build_time_seconds", 12.5)
    run.log_metric("constraint_violations", 0)

    # Set tags
    run.set_tag("status", "success")
"""

BLOCK_MLFLOW = """
import sys

class _NoMlflow:
    def find_spec(self, name, path=None, target=None):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoMlflow())
try:
    import mlflow  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the blocker failed: mlflow imported")
"""

CHECK_NO_MLFLOW = """
leaked = sorted(m for m in sys.modules if m == "mlflow" or m.startswith("mlflow."))
assert not leaked, leaked
print("ok")
"""


def test_noop_without_mlflow(project: Path):
    """REQ-M3-007: with mlflow not importable, seed 001's basic example works and journals everything."""
    proc = subprocess.run([sys.executable, "-c", BLOCK_MLFLOW + BASIC_EXAMPLE + CHECK_NO_MLFLOW], cwd=project,
                          env=subprocess_env(), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok"]
    records = _only_journal(project)
    assert [r["type"] for r in records] == ["run_start", "param", "param", "metric", "metric", "tag", "run_end"]
    assert records[0]["run_name"] == "my-coupon-build"
    assert [(r["key"], r["value"]) for r in records if r["type"] == "param"] == [
        ("coupon_family", "F1_SINGLE_ENDED_VIA"), ("fab_profile", "oshpark_4layer")]
    assert [(r["key"], r["value"]) for r in records if r["type"] == "metric"] == [
        ("build_time_seconds", 12.5), ("constraint_violations", 0.0)]
    assert records[-1]["status"] == "FINISHED"


# --------------------------------------------------------------------------- seed 001 snippets, as written

def test_seed_basic_usage(in_project: Path):
    """Seed 001 "Starting a Tracked Run": a journal under data/runs with every call, default experiment."""
    exec(BASIC_EXAMPLE, {})  # noqa: S102 - the seed's snippet, verbatim
    (journal,) = _journals(in_project)
    assert journal.parent.parent.parent == (in_project / "data" / "runs").resolve()
    records = _records(journal)
    start = records[0]
    assert start["type"] == "run_start" and start["experiment"] == "formula-foundry"
    assert start["parent_run_id"] is None and start["pid"] == os.getpid()
    assert start["tags"]["ff.run_id"] == start["run_id"]
    assert journal.name.startswith(start["run_id"] + ".")
    assert [(r["key"], r["value"]) for r in records if r["type"] == "tag"] == [("status", "success")]
    assert records[-1] == {**records[-1], "type": "run_end", "status": "FINISHED"}


def test_seed_experiment_name(in_project: Path):
    """Seed 001 "Standard Experiment Names": experiment_name goes into run_start."""
    tracker = get_tracker()

    with tracker.start_run(
        run_name="sim-001",
        experiment_name="ff-m2-simulation",
    ) as run:
        run.log_metric("insertion_loss_db", -0.5)

    start = _records(run.journal_path)[0]
    assert (start["experiment"], start["run_name"]) == ("ff-m2-simulation", "sim-001")


def test_seed_nested_runs(in_project: Path):
    """Seed 001 "Nested Runs": children record the parent's run id and share its run directory."""
    tracker = get_tracker()

    with tracker.start_run(run_name="pipeline-run") as parent:
        parent.log_param("pipeline_version", "1.0")

        with tracker.start_run(run_name="coupongen", nested=True) as child1:
            child1.log_metric("build_time", 5.0)

        with tracker.start_run(run_name="simulation", nested=True) as child2:
            child2.log_metric("sim_time", 120.0)

    assert len(_journals(in_project)) == 3
    assert child1.run_dir == child2.run_dir == parent.run_dir
    starts = {r["run_name"]: r for r in (_records(p)[0] for p in _journals(in_project))}
    assert starts["pipeline-run"]["parent_run_id"] is None
    assert starts["coupongen"]["parent_run_id"] == parent.run_id
    assert starts["simulation"]["parent_run_id"] == parent.run_id
    for run in (parent, child1, child2):
        assert _records(run.journal_path)[-1]["status"] == "FINISHED"


def test_nested_without_an_active_run_is_top_level(in_project: Path):
    """nested=True with no run open starts an ordinary top-level run (as in MLflow)."""
    with get_tracker().start_run(run_name="alone", nested=True) as run:
        pass
    assert _records(run.journal_path)[0]["parent_run_id"] is None


def test_get_tracker_is_shared(in_project: Path):
    """Separate get_tracker() calls return one tracker, so a nested run in other code finds its parent."""
    with get_tracker().start_run(run_name="outer") as outer, \
            get_tracker().start_run(run_name="inner", nested=True) as inner:
        pass
    assert _records(inner.journal_path)[0]["parent_run_id"] == outer.run_id


# --------------------------------------------------------------------------- run lifecycle

def test_run_ends_finished(in_project: Path):
    """Leaving the block normally: run_end FINISHED is the last record and the journal is closed."""
    with get_tracker().start_run(run_name="ok") as run:
        run.log_metric("m", 1.0)
    last = _records(run.journal_path)[-1]
    assert last["type"] == "run_end" and last["status"] == "FINISHED" and "error" not in last
    assert run.status == "FINISHED" and not run.active


def test_run_ends_failed_and_the_exception_propagates(in_project: Path):
    """An exception in the block: run_end FAILED with the error, and the exception reaches the caller."""
    with pytest.raises(RuntimeError, match="boom"), get_tracker().start_run(run_name="bad") as run:
        raise RuntimeError("boom")
    last = _records(run.journal_path)[-1]
    assert (last["type"], last["status"], last["error"]) == ("run_end", "FAILED", "RuntimeError: boom")


def test_run_ends_killed_on_keyboard_interrupt(in_project: Path):
    """Ctrl-C (KeyboardInterrupt) in the block: run_end KILLED, and the interrupt propagates."""
    with pytest.raises(KeyboardInterrupt), get_tracker().start_run(run_name="interrupted") as run:
        raise KeyboardInterrupt
    last = _records(run.journal_path)[-1]
    assert (last["type"], last["status"]) == ("run_end", "KILLED")


def test_end_is_idempotent(in_project: Path):
    """end() twice writes one run_end; the first status stands."""
    run = get_tracker().start_run(run_name="twice")
    run.end("FAILED")
    run.end("FINISHED")
    ends = [r for r in _records(run.journal_path) if r["type"] == "run_end"]
    assert [e["status"] for e in ends] == ["FAILED"]


def test_second_top_level_run_while_active_is_refused(in_project: Path):
    """start_run without nested=True while a run is open: RunStateError, and nothing is created."""
    tracker = get_tracker()
    with tracker.start_run(run_name="first") as first:
        with pytest.raises(RunStateError, match="nested=True"):
            tracker.start_run(run_name="second")
        first.log_metric("still", 1.0)
    assert _journals(in_project) == [first.journal_path]
    assert _records(first.journal_path)[-1]["status"] == "FINISHED"


def test_logging_after_end_is_refused(in_project: Path):
    """Every logging call on an ended run raises RunStateError and writes nothing."""
    with get_tracker().start_run(run_name="ended") as run:
        run.log_param("p", 1)
    before = run.journal_path.read_bytes()
    calls = [lambda: run.log_metric("m", 1.0), lambda: run.log_metrics({"m": 1.0}),
             lambda: run.log_param("q", 2), lambda: run.log_param("p", 1), lambda: run.log_params({"q": 2}),
             lambda: run.set_tag("t", "x"), lambda: run.set_tags({"t": "x"}),
             lambda: run.log_manifest({"git_sha": "unknown"}),
             lambda: run.log_artifact_reference("a.txt", "0" * 64, 1)]
    for call in calls:
        with pytest.raises(RunStateError):
            call()
    assert run.journal_path.read_bytes() == before


def test_open_run_and_segment_are_ended_at_interpreter_exit(project: Path):
    """A run and an attached segment never ended by the script get run_end FINISHED / segment_end
    at normal interpreter exit (as MLflow ends open runs)."""
    script = textwrap.dedent("""
        from formula_foundry.tracking import get_tracker
        run = get_tracker().start_run(run_name="left-open")
        run.log_metric("m", 1.0)
        segment = get_tracker().attach_run(run.run_id)
        segment.log_metric("n", 2.0)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=project, env=subprocess_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    last = sorted((_records(p)[0]["type"], _records(p)[-1]) for p in _journals(project))
    assert [(kind, end["type"], end.get("status")) for kind, end in last] == [
        ("run_attach", "segment_end", None), ("run_start", "run_end", "FINISHED")]


# --------------------------------------------------------------------------- batch forms and extras

def test_batch_forms_and_log_manifest(in_project: Path):
    """log_params / log_metrics / set_tags write one record each; log_manifest writes tags + manifest."""
    with get_tracker().start_run(run_name="batch", tags={"team": "si"}, description="why") as run:
        run.log_params({"a": 1, "b": "x"})
        run.log_metrics({"loss": 0.5, "acc": 0.9}, step=3, timestamp=1763913600000)
        run.set_tags({"stage": "fit", "ok": True})
        run.log_manifest({"git_sha": GIT_SHA, "design_doc_sha256": "unknown", "seeds": {"python": 1}})
    records = _records(run.journal_path)
    assert records[0]["tags"]["team"] == "si" and records[0]["tags"]["mlflow.note.content"] == "why"
    assert [r["type"] for r in records] == ["run_start", "params", "metrics", "tags", "tags", "manifest",
                                            "run_end"]
    params, metrics, tags, manifest_tags, manifest = records[1:6]
    assert params["values"] == {"a": "1", "b": "x"}
    assert (metrics["values"], metrics["step"], metrics["mts"]) == ({"loss": 0.5, "acc": 0.9}, 3, 1763913600000)
    assert tags["values"] == {"stage": "fit", "ok": "True"}
    assert manifest_tags["values"] == {"git_sha": GIT_SHA, "design_doc_sha256": "unknown",
                                       "environment_fingerprint": "unknown", "determinism_mode": "unknown",
                                       "seed_python": "1"}
    assert manifest["manifest"]["git_sha"] == GIT_SHA


@pytest.mark.parametrize("kwargs, rule", [
    ({"run_name": "bad \ud800"}, "run-name"),
    ({"run_name": "r" * 251}, "run-name"),
    ({"experiment_name": " "}, "experiment-name"),
    ({"tags": {"bad key*": "x"}}, "key-chars"),
    ({"description": "d" * 8001}, "tag-length"),
    ({"manifest": {"git_sha": "x", "path": Path("/tmp")}}, "value-type"),
    ({"manifest": "not a manifest"}, "value-type"),
])
def test_start_run_validates_before_creating_anything(in_project: Path, kwargs, rule):
    """A start_run MLflow would refuse raises ValidationError and creates no run dir or journal."""
    with pytest.raises(ValidationError) as info:
        get_tracker().start_run(**kwargs)
    assert info.value.rule == rule
    assert not (in_project / "data").exists()
    assert get_tracker().active_run() is None


@pytest.mark.parametrize("args, rule", [
    (("/abs/path", "0" * 64, 1), "artifact-path"),
    (("a/../b", "0" * 64, 1), "artifact-path"),
    (("", "0" * 64, 1), "artifact-path"),
    (("a.txt", "xyz", 1), "artifact-digest"),
    (("a.txt", "0" * 64, -1), "artifact-size"),
    (("a.txt", "0" * 64, True), "artifact-size"),
])
def test_artifact_reference_is_validated(in_project: Path, args, rule):
    """A reference that cannot name a stored artifact is refused at the call, and nothing is written."""
    with get_tracker().start_run(run_name="refs") as run:
        before = run.journal_path.read_bytes()
        with pytest.raises(ValidationError) as info:
            run.log_artifact_reference(*args)
        assert info.value.rule == rule
        assert run.journal_path.read_bytes() == before


def test_artifact_reference_accepts_a_prefixed_digest(in_project: Path):
    """A ``sha256:<hex>`` digest is recorded as the bare hex digest the store uses."""
    with get_tracker().start_run(run_name="refs") as run:
        run.log_artifact_reference("dir/a.txt", "sha256:" + "ab" * 32, 3, media_type="text/plain")
    (ref,) = [r for r in _records(run.journal_path) if r["type"] == "artifact_ref"]
    assert (ref["logical_path"], ref["digest"], ref["media_type"]) == ("dir/a.txt", "ab" * 32, "text/plain")


# --------------------------------------------------------------------------- disabled tracking

def _seed_calls() -> None:
    tracker = get_tracker()
    with tracker.start_run(run_name="p", experiment_name="ff-m1-coupongen") as parent:
        parent.log_param("a", 1)
        parent.log_params({"b": 2})
        parent.log_metric("m", 1.0, step=1)
        parent.log_metrics({"n": 2.0})
        parent.set_tag("t", "x")
        parent.set_tags({"u": "y"})
        parent.log_artifact_reference(logical_path="x", digest="0" * 64, size_bytes=1)
        with tracker.start_run(run_name="c", nested=True) as child:
            child.log_metric("m", 2.0)
    assert isinstance(parent, NoopRun) and isinstance(child, NoopRun)


def test_disabled_in_config_writes_nothing(in_project: Path):
    """tracking.enabled: false: every call works and nothing at all is written."""
    cfg = in_project / "config" / "mlflow.yaml"
    cfg.write_text(cfg.read_text().replace("enabled: true", "enabled: false"))
    _seed_calls()
    assert [p.relative_to(in_project) for p in _files(in_project)] == [Path("config/mlflow.yaml")]


def test_disabled_by_environment_writes_nothing(in_project: Path, monkeypatch):
    """FF_TRACKING_ENABLED=0 disables tracking the same way."""
    monkeypatch.setenv("FF_TRACKING_ENABLED", "0")
    _seed_calls()
    assert not (in_project / "data").exists()


# --------------------------------------------------------------------------- segments

ATTACH = """
import sys
from formula_foundry.tracking import get_tracker

with get_tracker().attach_run(sys.argv[1]) as run:
    run.log_metric("rank1_loss", 0.5, step=0)
    print(run.journal_path)
"""


def test_attach_run_writes_a_second_segment(in_project: Path):
    """Another process attaching to a run (by run id) writes its own segment in the same run dir:
    run_attach ... segment_end; the owner's journal is untouched and still ends with run_end."""
    with get_tracker().start_run(run_name="ranks") as run:
        run.log_metric("rank0_loss", 0.25, step=0)
        proc = subprocess.run([sys.executable, "-c", ATTACH, run.run_id], cwd=in_project, env=subprocess_env(),
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        run.log_metric("rank0_loss", 0.125, step=1)
    segment = Path(proc.stdout.strip())
    assert segment.parent == run.journal_path.parent and segment != run.journal_path
    assert sorted(run.journal_path.parent.iterdir()) == sorted([segment, run.journal_path])
    records = _records(segment)
    assert [r["type"] for r in records] == ["run_attach", "metric", "segment_end"]
    assert records[0]["run_id"] == run.run_id and records[0]["pid"] != os.getpid()
    assert records[0]["journal_id"] != _records(run.journal_path)[0]["journal_id"]
    owner = _records(run.journal_path)
    assert [r.get("step") for r in owner if r["type"] == "metric"] == [0, 1]
    assert owner[-1]["type"] == "run_end"


def test_attach_run_in_the_same_process_after_end(in_project: Path):
    """A resumed run (same process, after the first segment ended) attaches with run_dir found by id."""
    with get_tracker().start_run(run_name="resumable") as first:
        first.log_metric("epoch", 1.0, step=1)
    with get_tracker().attach_run(first.run_id) as resumed:
        resumed.log_metric("epoch", 2.0, step=2)
    assert resumed.run_dir == first.run_dir and resumed.journal_path != first.journal_path
    assert [r["type"] for r in _records(resumed.journal_path)] == ["run_attach", "metric", "segment_end"]


def test_attach_run_to_an_unknown_run_is_refused(in_project: Path):
    """attach_run needs a 32-hex producer run id that has a journal under the journal roots."""
    with pytest.raises(ValidationError):
        get_tracker().attach_run("not-an-id")
    with pytest.raises(RunStateError, match="no journal of run"):
        get_tracker().attach_run("f" * 32)


# --------------------------------------------------------------------------- imports

def test_import_does_not_import_mlflow():
    """``import formula_foundry.tracking`` in a fresh interpreter imports neither mlflow nor watchdog."""
    script = textwrap.dedent("""
        import sys
        import formula_foundry.tracking
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("mlflow", "watchdog")))
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=subprocess_env(), capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# --------------------------------------------------------------------------- docs/workflow.md

WORKFLOW_DOC = Path(__file__).resolve().parents[2] / "docs" / "workflow.md"


def test_workflow_doc_snippets_run(in_project: Path, capsys):
    """Every Python example in docs/workflow.md (except the MLflow-reading ones) runs as written."""
    Path("output").mkdir()
    Path("output/coupon.kicad_pcb").write_bytes(b"(kicad_pcb)\n")
    blocks = WORKFLOW_DOC.read_text(encoding="utf-8").split("```python\n")[1:]
    snippets = [block.split("```", 1)[0] for block in blocks]
    runnable = [code for code in snippets if "import mlflow" not in code]
    assert len(runnable) >= 9
    for code in runnable:
        exec(compile(code, str(WORKFLOW_DOC), "exec"), {})  # noqa: S102 - the documented examples
    assert "key-chars loss*" in capsys.readouterr().out
    assert get_tracker().active_run() is None
    kinds = sorted(_records(p)[0]["type"] for p in in_project.glob("data/runs/*/tracking/*.jsonl"))
    assert kinds.count("run_attach") == 1 and kinds.count("run_start") == len(kinds) - 1


def test_nested_run_inherits_parent_experiment(in_project):
    """A child started with nested=True and no experiment_name lands in its parent's experiment."""
    from formula_foundry.tracking.journal import JournalReader

    tracker = get_tracker()
    with tracker.start_run(run_name="p", experiment_name="ff-m3-pipeline") as parent:
        with tracker.start_run(run_name="c", nested=True) as child:
            pass
        with tracker.start_run(run_name="c2", nested=True, experiment_name="ff-m2-simulation") as other:
            pass
    assert parent.experiment_name == child.experiment_name == "ff-m3-pipeline"
    assert JournalReader(child.journal_path).first_record()["experiment"] == "ff-m3-pipeline"
    assert other.experiment_name == "ff-m2-simulation"
