"""Shared pieces of the benchmarks: statistics, result rows, the table, child processes, fresh stores.

Every benchmark module returns a list of :class:`Row`; ``run.py`` prints them
as one markdown table. A row keeps its raw samples (``samples``) so ratios,
the plot and ``--json`` work from the same numbers that were printed.

Children: work that must start from a fresh interpreter (import cost, peak
memory, anything that imports MLflow next to our producer) runs as
``python tools/bench/<module>.py child ...`` and prints one JSON object as its
last stdout line; :func:`run_child` parses it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
BENCH_DIR = Path(__file__).resolve().parent
SECTIONS = ("producer", "import", "ingest", "watch", "bulk", "artifacts", "artifacts-ingest", "telemetry", "workers", "bulk-pg",
            "ship", "target")


# --------------------------------------------------------------------------- statistics

@dataclass(frozen=True)
class Stats:
    """Median and range of repeated measurements (warm-up runs are never in ``values``)."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        if not values:
            raise ValueError("no samples")
        return cls(tuple(float(v) for v in values))

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    @property
    def runs(self) -> int:
        return len(self.values)

    def map(self, fn: Callable[[float], float]) -> Stats:
        return Stats(tuple(fn(v) for v in self.values))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


# --------------------------------------------------------------------------- rows and the table

@dataclass
class Row:
    """One line of the table. ``result`` is the median, ``spread`` the min–max, both already formatted."""

    section: str
    option: str
    result: str
    spread: str = ""
    runs: str = ""
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)  # raw numbers, by quantity name

    def to_json(self) -> dict:
        return {"section": self.section, "option": self.option, "result": self.result, "spread": self.spread,
                "runs": self.runs, "note": self.note, "samples": self.samples}


def fmt_num(value: float) -> str:
    """Three significant digits for small numbers, whole numbers with separators from 100 up."""
    if math.isnan(value):
        return "n/a"
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def fmt_us(seconds: float) -> str:
    """A per-event cost given in seconds, shown in µs or ms."""
    us = seconds * 1e6
    return f"{fmt_num(us / 1000)} ms" if us >= 1000 else f"{fmt_num(us)} µs"


def fmt_rate(per_s: float, unit: str = "/s") -> str:
    """A rate with thousands separators: ``172,300 /s``."""
    return f"{per_s:,.0f} {unit}"


def fmt_mb(kib: float) -> str:
    return f"{kib / 1024:,.0f} MB"


def runs_label(runs: int, n: int | None = None, unit: str = "") -> str:
    return f"{runs} × {n:,}{unit}" if n is not None else f"{runs}"


def table(rows: Sequence[Row]) -> str:
    """The rows as one markdown table, grouped by section in :data:`SECTIONS` order."""
    header = ("section", "option", "median", "min – max", "runs × N", "note")
    ordered = sorted(rows, key=lambda r: SECTIONS.index(r.section) if r.section in SECTIONS else 99)
    cells = [header] + [(r.section, r.option, r.result, r.spread, r.runs, r.note) for r in ordered]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]

    def line(cols: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").ljust(w) for c, w in zip(cols, widths)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(c) for c in cells[1:]]
    return "\n".join(out)


# --------------------------------------------------------------------------- the machine

def machine_info() -> dict[str, str]:
    """What a reader needs to compare numbers: cores, CPU model, Python, library versions, load."""
    cpu = "unknown"
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mlflow": version("mlflow"),
        "orjson": version("orjson"),
        "sqlalchemy": version("SQLAlchemy"),
        "watchdog": version("watchdog"),
        "wandb": version("wandb"),
        "loadavg": load,
    }


# --------------------------------------------------------------------------- processes and files

def child_env(**extra: str) -> dict[str, str]:
    """The environment for benchmark children: the repo's ``src`` first, no tracking overrides, quiet MLflow."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("FF_CONFIG", "MLFLOW_TRACKING_URI", "FF_ARTIFACT_ROOT", "FF_JOURNAL_ROOT",
                        "FF_TRACKING_ENABLED")}
    env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("PYTHONHASHSEED", "0")
    env.update(extra)
    return env


def run_child(module: str, args: Sequence[str], *, timeout: float = 1800) -> dict:
    """Run ``tools/bench/<module>.py child ARGS`` and return the JSON object on its last stdout line."""
    cmd = [sys.executable, str(BENCH_DIR / f"{module}.py"), "child", *args]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=REPO)
    lines = [text for text in proc.stdout.splitlines() if text.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise RuntimeError(f"{' '.join(cmd[1:3])} {' '.join(args[:2])} failed (exit {proc.returncode}):\n  "
                           + "\n  ".join(tail))
    return json.loads(lines[-1])


def emit(result: dict) -> None:
    """A child's answer: one JSON line on stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def rss_kib() -> int:
    """Current resident set size of this process (``VmRSS``), KiB."""
    return _status_kib("VmRSS")


def peak_rss_kib() -> int:
    """Peak resident set size of this process so far (``VmHWM``), KiB."""
    return _status_kib("VmHWM")


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as fh:
        for text in fh:
            if text.startswith(field_name + ":"):
                return int(text.split()[1])
    return 0


def write_project(folder: Path, *, fsync: str = "interval", store_db: Path | None = None,
                  extra_yaml: str = "") -> Path:
    """A throw-away project: ``config/mlflow.yaml`` with everything under ``folder``. Returns the config path."""
    (folder / "config").mkdir(parents=True, exist_ok=True)
    db = store_db or folder / "mlflow" / "mlruns.db"
    text = (
        "tracking:\n"
        f"  backend_store_uri: \"sqlite:///{db}\"\n"
        f"  artifact_root: \"{folder / 'mlflow' / 'artifacts'}\"\n"
        "  default_experiment: \"bench\"\n"
        "journal:\n"
        f"  root: \"{folder / 'runs'}\"\n"
        f"  fsync: \"{fsync}\"\n"
        "ingest:\n"
        f"  state_dir: \"{folder / 'mlflow' / 'ingest'}\"\n"
    ) + extra_yaml
    path = folder / "config" / "mlflow.yaml"
    path.write_text(text)
    return path


def template_store() -> Path:
    """A migrated, empty MLflow SQLite store, built once per mlflow version and cached in the temp dir.

    Creating a store runs every MLflow migration (seconds); each benchmark run
    copies this file instead. Built under a lock and renamed into place by
    :func:`~formula_foundry.tracking.ingest.stores.store_init.ensure_sqlite_store`, so a
    cached file is always complete. Runs in a child so this process never imports MLflow.
    """
    cache = Path(tempfile.gettempdir()) / "ff-bench-cache" / f"mlflow-{machine_info()['mlflow']}"
    db = cache / "template.db"
    if db.exists() and db.stat().st_size > 0:
        return db
    cache.mkdir(parents=True, exist_ok=True)
    code = ("import sys; from pathlib import Path; "
            "from formula_foundry.tracking.ingest.stores.store_init import ensure_sqlite_store; "
            "ensure_sqlite_store(Path(sys.argv[1]), Path(sys.argv[2]).as_uri())")
    subprocess.run([sys.executable, "-c", code, str(db), str(cache / "artifacts")], check=True,
                   env=child_env(), capture_output=True, timeout=600)
    return db


def fresh_store(template: Path, dest: Path) -> Path:
    """Copy the template store to ``dest`` (a new, empty MLflow store)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, dest)
    return dest


_smoke = False


def set_smoke(on: bool) -> None:
    """``run.py --smoke``: the sections that know it run tiny N once (see :func:`smoke`)."""
    global _smoke
    _smoke = on


def smoke() -> bool:
    """True under ``run.py --smoke``: tiny N, one run each. It checks that a benchmark runs end to end
    (the test suite uses it); its numbers mean nothing."""
    return _smoke


def progress(text: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(f"[bench] {text}", file=sys.stderr, flush=True)
