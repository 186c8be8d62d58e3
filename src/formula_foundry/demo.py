"""The demo pipeline: one Formula Foundry M3 pipeline run, logged through seed 001's API.

``tools/demo.py`` runs it and ingests the journals into MLflow; this module is the
pipeline itself, importable so that tests and notebooks can run it too::

    from formula_foundry.demo import run_pipeline
    result = run_pipeline(seed=42)          # config/mlflow.yaml found from the current directory
    print(result.run_id, result.substrate_run_dir)

What it logs, and where each part of the API shows up
-----------------------------------------------------
One parent run ``m3-pipeline-demo`` in experiment ``ff-m3-pipeline`` with, per
coupon, two nested runs in the same experiment:

* ``coupongen-<coupon>`` (M1-style work): coupon geometry params, a layout
  optimiser (``optimizer/loss``, ``optimizer/impedance_ohm``,
  ``optimizer/learning_rate`` over 300 steps), ``build_time_seconds`` and
  ``constraint_violations``; the KiCad board and a geometry JSON go into the
  content-addressed :class:`~formula_foundry.substrate.ArtifactStore` and are
  logged with :meth:`Run.log_artifact_reference`.
* ``simulate-<coupon>`` (M2-style work): solver params, the solver's
  convergence (``solver/log10_residual`` over 500 time steps) and the S-parameter
  sweep (``insertion_loss_db``, ``return_loss_db`` and ``frequency_ghz`` over
  400 frequency steps: step ``i`` is ``freq_start_ghz + i * freq_step_ghz``, 0.1 to
  40 GHz); a
  Touchstone ``.s2p`` file goes into the store and is referenced.

Every run gets the substrate manifest (``Manifest.from_environment`` with a
strict :class:`DeterminismConfig`: tags ``git_sha``, ``design_doc_sha256``,
``environment_fingerprint``, ``determinism_mode``, ``seed_*``), its own
substrate run directory from :func:`init_run_dir` under the journal root
(``data/runs``; tags ``substrate_run_id``, ``substrate_run_dir``) with the
manifest written into it, and the seed-003 convention tags ``task``,
``milestone``, ``agent``, ``dataset_version``, ``code_revision``.

All numbers come from a ``random.Random(seed)`` per coupon and closed-form
models, so a seed always gives the same params and metric values; only ids,
timestamps and the manifest's ``created_utc`` differ between two runs.
Standard library only, like the rest of the producer side (no MLflow import).
"""

from __future__ import annotations

import json
import math
import os
import random
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from formula_foundry.substrate import ArtifactStore, DeterminismConfig, Manifest, RunArtifacts, init_run_dir
from formula_foundry.tracking import Config, get_tracker, load_config
from formula_foundry.tracking.conventions import convention_tags

__all__ = [
    "AGENT",
    "COUPONS",
    "DATASET_VERSION",
    "EXPERIMENT",
    "PIPELINE_RUN_NAME",
    "ChildResult",
    "Coupon",
    "PipelineResult",
    "coupon_build",
    "insertion_loss_sweep",
    "optimizer_curve",
    "run_pipeline",
    "solver_residuals",
]

EXPERIMENT = "ff-m3-pipeline"
PIPELINE_RUN_NAME = "m3-pipeline-demo"
PIPELINE_VERSION = "1.0"
AGENT = "ff-demo"
DATASET_VERSION = "coupon-lib-2026.11"
FAB_PROFILE = "oshpark_4layer"
DEFAULT_SEED = 42

# The frequency sweep of every simulation: 400 points, 0.1 to 40.0 GHz. Its last point is the
# band edge, so the latest insertion_loss_db / return_loss_db values are the ones the M2
# acceptance criteria (config/acceptance_criteria_registry.csv) judge.
FREQ_START_GHZ = 0.1
FREQ_STEP_GHZ = 0.1
N_FREQ = 400
BAND_EDGE_GHZ = round(FREQ_START_GHZ + (N_FREQ - 1) * FREQ_STEP_GHZ, 4)
OPTIMIZER_STEPS = 300
DEMO_SYSTEM_METRICS_INTERVAL = 0.2  # seconds: the pipeline run lasts about a second
SOLVER_STEPS = 500


@dataclass(frozen=True)
class Coupon:
    """One single-ended via-transition test coupon (the F1 family of the M1 coupon generator)."""

    name: str
    via_drill_mm: float
    antipad_mm: float
    stub_mm: float
    family: str = "F1_SINGLE_ENDED_VIA"
    trace_width_mm: float = 0.16
    target_impedance_ohm: float = 50.0


COUPONS: tuple[Coupon, ...] = (
    Coupon("via-d020", via_drill_mm=0.20, antipad_mm=0.60, stub_mm=0.25),
    Coupon("via-d025", via_drill_mm=0.25, antipad_mm=0.70, stub_mm=0.80),
    Coupon("via-d030", via_drill_mm=0.30, antipad_mm=0.80, stub_mm=1.40),
)


@dataclass(frozen=True)
class ChildResult:
    """A nested run: its producer run id, name, substrate run directory and artifacts."""

    kind: str  # "coupongen" or "simulate"
    coupon: str
    run_id: str
    run_name: str
    substrate_run_dir: Path
    artifacts: tuple[Any, ...]  # ArtifactEntry values
    summary: dict[str, float]


@dataclass(frozen=True)
class PipelineResult:
    """What :func:`run_pipeline` did: the parent run and its nested runs."""

    run_id: str  # the producer run id: MLflow tag ``ff.run_id``
    run_name: str
    experiment: str
    substrate_run_dir: Path
    children: tuple[ChildResult, ...]
    artifacts: tuple[Any, ...]
    config: Config
    summary: dict[str, float] = field(default_factory=dict)

    @property
    def run_dirs(self) -> tuple[Path, ...]:
        """Every substrate run directory the pipeline wrote (the parent's first)."""
        return (self.substrate_run_dir, *(c.substrate_run_dir for c in self.children))


# --------------------------------------------------------------------------- pure models

def _coupon_rng(seed: int, coupon: Coupon, stage: str) -> random.Random:
    # A string seed is hashed with sha512 by random.seed: stable across processes and versions.
    return random.Random(f"{seed}:{coupon.name}:{stage}")


def optimizer_curve(coupon: Coupon, seed: int, steps: int = OPTIMIZER_STEPS) -> list[dict[str, float]]:
    """The layout optimiser's trace: per step loss, achieved impedance and learning rate."""
    rng = _coupon_rng(seed, coupon, "optimizer")
    start_z = coupon.target_impedance_ohm * (1.25 + 0.1 * rng.random())
    decay = 0.018 + 0.006 * rng.random()
    floor = 0.002 + 0.004 * coupon.stub_mm
    points = []
    for step in range(steps):
        lr = 1e-3 * 0.5 * (1 + math.cos(math.pi * step / steps)) + 1e-5
        z_err = (start_z - coupon.target_impedance_ohm) * math.exp(-decay * step)
        z = coupon.target_impedance_ohm + z_err + rng.gauss(0.0, 0.15 * math.exp(-step / 120))
        loss = (z - coupon.target_impedance_ohm) ** 2 / coupon.target_impedance_ohm + floor
        loss *= 1 + 0.08 * rng.gauss(0.0, 1.0) * math.exp(-step / 200)
        points.append({"optimizer/loss": round(abs(loss), 6), "optimizer/impedance_ohm": round(z, 4),
                       "optimizer/learning_rate": round(lr, 8)})
    return points


def coupon_build(coupon: Coupon, seed: int) -> dict[str, float]:
    """Summary metrics of a coupon build (the M1 acceptance metrics among them)."""
    rng = _coupon_rng(seed, coupon, "build")
    return {
        "build_time_seconds": round(6.0 + 4.0 * rng.random() + 3.0 * coupon.via_drill_mm, 3),
        "constraint_violations": 0.0,
        "drc_checks": float(180 + rng.randrange(40)),
        "board_area_mm2": round(40.0 * 18.0 + 50 * coupon.antipad_mm, 2),
    }


def _stub_resonance_ghz(coupon: Coupon) -> float:
    # Quarter-wave stub resonance in FR-4-like material (eps_eff ~ 3.9): f = c / (4 L sqrt(eps)).
    return 299.792458 / (4 * coupon.stub_mm * math.sqrt(3.9))


def insertion_loss_sweep(coupon: Coupon, seed: int) -> list[dict[str, float]]:
    """S21/S11 in dB over the frequency sweep: conductor + dielectric loss and a stub-resonance notch."""
    rng = _coupon_rng(seed, coupon, "sweep")
    f_res = _stub_resonance_ghz(coupon)
    q = 6.0 + 2.0 * rng.random()
    ripple_phase = rng.uniform(0, 2 * math.pi)
    points = []
    for i in range(N_FREQ):
        f = FREQ_START_GHZ + i * FREQ_STEP_GHZ
        conductor = 0.045 * math.sqrt(f)
        dielectric = 0.012 * f * (1 + 0.4 * coupon.via_drill_mm)
        notch = 12.0 / (1 + (q * (f / f_res - f_res / f)) ** 2)
        il = -(conductor + dielectric + notch) + 0.01 * math.sin(f * 1.7 + ripple_phase)
        rl = -32.0 + 14.0 * (f / 40.0) + 6.0 * coupon.via_drill_mm + 0.8 * math.sin(f * 0.9 + ripple_phase)
        rl += 8.0 / (1 + (q * (f / f_res - f_res / f)) ** 2)
        points.append({"frequency_ghz": round(f, 4), "insertion_loss_db": round(il, 5),
                       "return_loss_db": round(min(rl, -0.5), 5)})
    return points


def solver_residuals(coupon: Coupon, seed: int, steps: int = SOLVER_STEPS) -> list[float]:
    """log10 of the field solver's residual per time step: a noisy, roughly exponential decay."""
    rng = _coupon_rng(seed, coupon, "solver")
    rate = 0.011 + 0.002 * rng.random() - 0.002 * coupon.stub_mm
    values, level = [], 0.0
    for step in range(steps):
        level = -rate * step + 0.25 * math.sin(step / 23.0) * math.exp(-step / 250) + rng.gauss(0, 0.04)
        values.append(round(max(level, -8.0), 5))
    return values


def _kicad_board(coupon: Coupon, seed: int) -> str:
    """A small, plausible KiCad board file for the coupon (deterministic text)."""
    return "\n".join([
        '(kicad_pcb (version 20240108) (generator "formula_foundry.demo")',
        f'  (general (thickness 1.6)) (paper "A5") (title_block (title "{coupon.name}") (comment 1 "seed {seed}"))',
        '  (layers (0 "F.Cu" signal) (1 "In1.Cu" power) (2 "In2.Cu" power) (31 "B.Cu" signal))',
        '  (net 0 "") (net 1 "SIG") (net 2 "GND")',
        f'  (segment (start 5 9) (end 20 9) (width {coupon.trace_width_mm}) (layer "F.Cu") (net 1))',
        (f'  (via (at 20 9) (size {coupon.via_drill_mm + 0.25:.2f}) (drill {coupon.via_drill_mm}) '
         f'(layers "F.Cu" "B.Cu") (net 1))'),
        f'  (segment (start 20 9) (end 35 9) (width {coupon.trace_width_mm}) (layer "B.Cu") (net 1))',
        f'  (zone (net 2) (layer "In1.Cu") (keepout_antipad {coupon.antipad_mm}))',
        ")",
        "",
    ])


def sparameter_figure(coupon: Coupon, sweep: Sequence[Mapping[str, float]]):
    """The S-parameter plot of one simulation: |S21| and |S11| in dB over frequency (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    freq = [p["frequency_ghz"] for p in sweep]
    ax.plot(freq, [p["insertion_loss_db"] for p in sweep], label="S21 (insertion loss)")
    ax.plot(freq, [p["return_loss_db"] for p in sweep], label="S11 (return loss)")
    ax.axvline(BAND_EDGE_GHZ, color="grey", linestyle=":", label=f"band edge {BAND_EDGE_GHZ:g} GHz")
    ax.set_xlabel("frequency (GHz)")
    ax.set_ylabel("dB")
    ax.set_title(f"{coupon.name}: via transition S-parameters")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def solver_log(coupon: Coupon, seed: int, summary: Mapping[str, float]) -> str:
    """The (synthetic) field solver's log of one simulation."""
    residuals = solver_residuals(coupon, seed)
    lines = [f"fdtd-demo: coupon {coupon.name}, {N_FREQ} frequencies from {FREQ_START_GHZ:g} GHz, "
             f"step {FREQ_STEP_GHZ:g} GHz"]
    lines += [f"step {step:4d}  log10(residual) {value:8.4f}" for step, value in enumerate(residuals)
              if step % 50 == 0 or step == len(residuals) - 1]
    lines.append(f"converged: S21 at band edge {summary['il_at_band_edge_db']:.3f} dB, "
                 f"stub resonance {summary['stub_resonance_ghz']:.3f} GHz")
    return "\n".join(lines) + "\n"


def _touchstone(points: Sequence[Mapping[str, float]]) -> str:
    """A Touchstone v1 .s2p (dB/angle) of the sweep, reciprocal and symmetric."""
    lines = ["! formula_foundry.demo via-transition sweep", "# GHZ S DB R 50"]
    for p in points:
        s11, s21 = p["return_loss_db"], p["insertion_loss_db"]
        phase = -(p["frequency_ghz"] * 36.0) % 360 - 180
        lines.append(f"{p['frequency_ghz']:.4f} {s11:.5f} 0.0 {s21:.5f} {phase:.3f} "
                     f"{s21:.5f} {phase:.3f} {s11:.5f} 0.0")
    return "\n".join(lines) + "\n"


def _at_ghz(points: Sequence[Mapping[str, float]], key: str, ghz: float) -> float:
    return min(points, key=lambda p: abs(p["frequency_ghz"] - ghz))[key]


# --------------------------------------------------------------------------- the pipeline

def _design_doc(root: Path) -> Path | None:
    if os.environ.get("FF_DESIGN_DOC"):
        return None  # Manifest.from_environment reads it itself
    for candidate in ("docs/DESIGN.md", "docs/design.md", "DESIGN.md"):
        if (root / candidate).is_file():
            return root / candidate
    return None


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _store_and_reference(run, store: ArtifactStore, path: Path, logical_path: str, media_type: str):
    """Add a file to the content-addressed store, then log a reference to it (never a copy)."""
    entry = store.add_file(path, logical_path=logical_path)
    run.log_artifact_reference(logical_path=entry.path, digest=entry.digest, size_bytes=entry.size_bytes,
                               store_uri=entry.uri, media_type=media_type)
    return entry


def _child_dir(run_root: Path, pipeline_id: str, suffix: str) -> RunArtifacts:
    return init_run_dir(run_root=run_root, run_id=f"{pipeline_id}.{suffix}")


def run_pipeline(config: Config | Path | str | None = None, *, seed: int = DEFAULT_SEED,
                 coupons: Sequence[Coupon] = COUPONS, artifact_store: Path | str | None = None,
                 run_id: str | None = None, repo_dir: Path | str | None = None) -> PipelineResult:
    """Run the demo pipeline and log it; returns what was logged (journals are written, not ingested).

    ``config``: a :class:`Config`, the path of ``config/mlflow.yaml``, or None to find
    it from the current directory (``$FF_CONFIG`` wins). Run directories go under the
    configured journal root (``data/runs``), artifacts into ``artifact_store``
    (default ``<project root>/data/artifacts``). ``run_id`` names the parent's
    substrate run directory (default: a UTC timestamp plus random hex). ``repo_dir`` is
    the git checkout whose HEAD the manifest records as ``git_sha`` (default: the
    project root; ``$FF_GIT_SHA`` wins).
    """
    cfg = config if isinstance(config, Config) else load_config(config)
    # The pipeline run samples system metrics at a short interval (it lasts about a second), so
    # MLflow's System metrics tab has a chart; its console output goes to logs/console.txt.
    cfg = replace(cfg, tracking=replace(cfg.tracking, system_metrics=replace(
        cfg.tracking.system_metrics, interval_seconds=DEMO_SYSTEM_METRICS_INTERVAL)))
    tracker = get_tracker(cfg)
    root = cfg.project_root
    run_root = cfg.journal.root
    store = ArtifactStore(Path(artifact_store) if artifact_store is not None else root / "data" / "artifacts")

    manifest = Manifest.from_environment(
        determinism=DeterminismConfig(mode="strict", seed=seed, cublas_workspace_config=":4096:8"),
        repo_dir=repo_dir if repo_dir is not None else root, design_doc=_design_doc(root))
    code_revision = manifest.git_sha
    pipeline_id = run_id or f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-m3-pipeline-{secrets.token_hex(3)}"
    pipeline_ra = init_run_dir(run_root=run_root, run_id=pipeline_id)
    manifest.write(pipeline_ra.manifest_path)
    started = time.perf_counter()

    children: list[ChildResult] = []
    with tracker.start_run(
        run_name=PIPELINE_RUN_NAME, experiment_name=EXPERIMENT, manifest=manifest, run_artifacts=pipeline_ra,
        description=("Formula Foundry demo: generate via-transition coupons (M1), simulate their "
                     "S-parameters (M2), and compare them at the band edge (M3 pipeline)."),
        log_system_metrics=True, capture_console=True,
    ) as pipeline:
        print(f"demo pipeline {pipeline_id}: {len(coupons)} coupons, seed {seed}", flush=True)
        pipeline.set_tags(convention_tags(task="M3-pipeline-demo", milestone="M3", agent=AGENT,
                                           dataset_version=DATASET_VERSION, code_revision=code_revision))
        pipeline.log_params({
            "pipeline_version": PIPELINE_VERSION,
            "seed": seed,
            "fab_profile": FAB_PROFILE,
            "coupon_family": coupons[0].family if coupons else "none",
            "n_coupons": len(coupons),
            "coupons": ",".join(c.name for c in coupons),
            "freq_start_ghz": FREQ_START_GHZ,
            "freq_stop_ghz": round(FREQ_START_GHZ + (N_FREQ - 1) * FREQ_STEP_GHZ, 4),
            "band_edge_ghz": BAND_EDGE_GHZ,
        })
        band_edge_il: dict[str, float] = {}
        for index, coupon in enumerate(coupons):
            children.append(_coupongen(tracker, coupon, seed, manifest, code_revision, store, run_root,
                                       pipeline_id))
            pipeline.log_metric("pipeline/coupons_built", index + 1, step=index)
            sim = _simulate(tracker, coupon, seed, manifest, code_revision, store, run_root, pipeline_id,
                            children[-1].artifacts[0])
            children.append(sim)
            band_edge_il[coupon.name] = sim.summary["il_at_band_edge_db"]
            pipeline.log_metric("pipeline/coupons_simulated", index + 1, step=index)
            pipeline.log_metric("pipeline/il_at_band_edge_db", sim.summary["il_at_band_edge_db"], step=index)

        best = max(band_edge_il, key=band_edge_il.get) if band_edge_il else None
        summary = {
            "best_il_at_band_edge_db": band_edge_il[best] if best else float("nan"),
            "coupons_passing_il": float(sum(v > -1.0 for v in band_edge_il.values())),
            "pipeline_time_seconds": round(time.perf_counter() - started, 4),
        }
        pipeline.log_metrics(summary)
        pipeline.set_tag("best_coupon", best or "none")
        report = {
            "pipeline_run_id": pipeline.run_id,
            "substrate_run_id": pipeline_id,
            "seed": seed,
            "band_edge_ghz": BAND_EDGE_GHZ,
            "insertion_loss_at_band_edge_db": band_edge_il,
            "best_coupon": best,
            "children": [{"kind": c.kind, "coupon": c.coupon, "run_id": c.run_id,
                          "substrate_run_dir": str(c.substrate_run_dir),
                          "artifacts": {a.path: a.digest for a in c.artifacts}} for c in children],
        }
        report_path = _write(pipeline_ra.outputs_dir / "pipeline_report.json",
                             json.dumps(report, indent=2, sort_keys=True) + "\n")
        report_entry = _store_and_reference(pipeline, store, report_path, "reports/pipeline_report.json",
                                            "application/json")
        parent_id = pipeline.run_id
        # At least three system-metrics samples in the pipeline run, however fast this machine is.
        time.sleep(max(0.0, 3.5 * DEMO_SYSTEM_METRICS_INTERVAL - (time.perf_counter() - started)))
        print(f"demo pipeline {pipeline_id}: done", flush=True)

    return PipelineResult(run_id=parent_id, run_name=PIPELINE_RUN_NAME, experiment=EXPERIMENT,
                          substrate_run_dir=pipeline_ra.run_dir, children=tuple(children),
                          artifacts=(report_entry,), config=cfg, summary=summary)


def _coupongen(tracker, coupon: Coupon, seed: int, manifest: Manifest, code_revision: str,
               store: ArtifactStore, run_root: Path, pipeline_id: str) -> ChildResult:
    ra = _child_dir(run_root, pipeline_id, f"coupongen-{coupon.name}")
    manifest.write(ra.manifest_path)
    name = f"coupongen-{coupon.name}"
    with tracker.start_run(run_name=name, experiment_name=EXPERIMENT, manifest=manifest, run_artifacts=ra,
                           nested=True) as run:
        run.set_tags(convention_tags(task="M1-coupon-build", milestone="M1", agent=AGENT,
                                      dataset_version=DATASET_VERSION, code_revision=code_revision))
        run.set_tag("coupon", coupon.name)
        run.log_params({
            "coupon_family": coupon.family,
            "fab_profile": FAB_PROFILE,
            "via_drill_mm": coupon.via_drill_mm,
            "antipad_mm": coupon.antipad_mm,
            "stub_mm": coupon.stub_mm,
            "trace_width_mm": coupon.trace_width_mm,
            "target_impedance_ohm": coupon.target_impedance_ohm,
            "layer_count": 4,
            "optimizer": "adam",
            "optimizer_steps": OPTIMIZER_STEPS,
        })
        for step, values in enumerate(optimizer_curve(coupon, seed)):
            run.log_metrics(values, step=step)
        summary = coupon_build(coupon, seed)
        run.log_metrics(summary)
        board = _write(ra.outputs_dir / "coupon.kicad_pcb", _kicad_board(coupon, seed))
        geometry = _write(ra.outputs_dir / "geometry.json", json.dumps({
            "coupon": coupon.name, "family": coupon.family, "via_drill_mm": coupon.via_drill_mm,
            "antipad_mm": coupon.antipad_mm, "stub_mm": coupon.stub_mm,
            "trace_width_mm": coupon.trace_width_mm, "fab_profile": FAB_PROFILE,
        }, indent=2, sort_keys=True) + "\n")
        entries = (
            _store_and_reference(run, store, board, f"coupons/{coupon.name}/coupon.kicad_pcb",
                                 "application/x-kicad-pcb"),
            _store_and_reference(run, store, geometry, f"coupons/{coupon.name}/geometry.json",
                                 "application/json"),
        )
        run_id = run.run_id
    return ChildResult("coupongen", coupon.name, run_id, name, ra.run_dir, entries, summary)


def _simulate(tracker, coupon: Coupon, seed: int, manifest: Manifest, code_revision: str,
              store: ArtifactStore, run_root: Path, pipeline_id: str, board) -> ChildResult:
    ra = _child_dir(run_root, pipeline_id, f"simulate-{coupon.name}")
    manifest.write(ra.manifest_path)
    name = f"simulate-{coupon.name}"
    with tracker.start_run(run_name=name, experiment_name=EXPERIMENT, manifest=manifest, run_artifacts=ra,
                           nested=True) as run:
        run.set_tags(convention_tags(task="M2-sim-insertion-loss", milestone="M2", agent=AGENT,
                                      dataset_version=DATASET_VERSION, code_revision=code_revision))
        run.set_tag("coupon", coupon.name)
        run.log_params({
            "coupon": coupon.name,
            "coupon_digest": board.digest,
            "solver": "fdtd-demo",
            "solver_steps": SOLVER_STEPS,
            "freq_start_ghz": FREQ_START_GHZ,
            "freq_step_ghz": FREQ_STEP_GHZ,
            "n_freq": N_FREQ,
            "port_impedance_ohm": 50,
            "mesh_cells": 180_000 + int(coupon.via_drill_mm * 200_000),
        })
        for step, value in enumerate(solver_residuals(coupon, seed)):
            run.log_metric("solver/log10_residual", value, step=step)
        sweep = insertion_loss_sweep(coupon, seed)
        for step, values in enumerate(sweep):
            run.log_metrics(values, step=step)
        rng = _coupon_rng(seed, coupon, "sim-time")
        summary = {
            "il_at_band_edge_db": _at_ghz(sweep, "insertion_loss_db", BAND_EDGE_GHZ),
            "rl_at_band_edge_db": _at_ghz(sweep, "return_loss_db", BAND_EDGE_GHZ),
            "stub_resonance_ghz": round(_stub_resonance_ghz(coupon), 3),
            "sim_time_seconds": round(240 + 900 * coupon.via_drill_mm + 60 * rng.random(), 2),
        }
        run.log_metrics(summary)
        s2p = _write(ra.outputs_dir / f"{coupon.name}.s2p", _touchstone(sweep))
        entries = (_store_and_reference(run, store, s2p, f"sparams/{coupon.name}.s2p",
                                        "application/vnd.touchstone"),)
        # Real artifacts, as MLflow's log_figure / log_table / log_text would write them.
        run.log_figure(sparameter_figure(coupon, sweep), f"plots/{coupon.name}-sparams.png")
        run.log_table({key: [p[key] for p in sweep] for key in sweep[0]}, f"tables/{coupon.name}-sweep.json")
        run.log_text(solver_log(coupon, seed, summary), f"logs/{coupon.name}-solver.log")
        run_id = run.run_id
    return ChildResult("simulate", coupon.name, run_id, name, ra.run_dir, entries, summary)
