"""System metrics (issue 19): MLflow's names, steps and averaging, sampled by one thread into the journal.

Real subprocesses for what a program sees (samples at the interval, a busy loop
shows CPU use, nothing after the run's end); the pure parts (:class:`Points`,
the ``/proc`` and ``nvidia-smi`` parsers) directly.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import yaml

from formula_foundry.errors import ConfigError
from formula_foundry.tracking import load_config
from formula_foundry.tracking.journal import JournalReader
from formula_foundry.tracking.system_metrics import (
    PREFIX,
    Gpu,
    Points,
    Reading,
    Sampler,
    SystemMetricsWarning,
    _cpu_from_proc_stat,
    _memory_from_meminfo,
    _network_from_net_dev,
    gpu_backend,
    parse_nvidia_smi,
)
from tests.conftest import REPO, subprocess_env
from tests.tracking import configure

HOST_KEYS = {PREFIX + k for k in (
    "cpu_utilization_percentage", "system_memory_usage_megabytes", "system_memory_usage_percentage",
    "disk_usage_megabytes", "disk_usage_percentage", "disk_available_megabytes",
    "network_receive_megabytes", "network_transmit_megabytes")}


def run_child(project: Path, code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", code], cwd=project, env=subprocess_env(), capture_output=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done


def system_points(journal: Path) -> list[dict]:
    """The ``metrics`` records of system metrics, after checking the whole journal reads back clean."""
    records = list(JournalReader(journal).records())
    assert records[-1]["type"] == "run_end"  # nothing after it: the sampler stopped before
    return [r for r in records if r["type"] == "metrics" and any(k.startswith(PREFIX) for k in r["values"])]


def only_journal(project: Path) -> Path:
    (journal,) = sorted((project / "data" / "runs").glob("*/tracking/*.jsonl"))
    return journal


# --------------------------------------------------------------------------- real processes

def test_samples_at_the_interval_under_mlflows_names_with_sane_values(project: Path):
    """Every interval one point per metric, steps 0, 1, 2, ... as MLflow's monitor logs them."""
    configure(project, system_metrics={"interval_seconds": 0.2})
    run_child(project, "import time\nfrom formula_foundry.tracking import get_tracker\n"
                       "with get_tracker().start_run(log_system_metrics=True):\n    time.sleep(1.3)\n")
    points = system_points(only_journal(project))
    assert 4 <= len(points) <= 7, len(points)
    assert [p["step"] for p in points] == list(range(len(points)))
    gaps = [b["ts"] - a["ts"] for a, b in zip(points, points[1:])]
    assert 120 <= statistics.median(gaps) <= 350, gaps
    for p in points:
        v = p["values"]
        assert set(v) >= HOST_KEYS, set(v) ^ HOST_KEYS
        assert 0 <= v[PREFIX + "cpu_utilization_percentage"] <= 100
        assert v[PREFIX + "system_memory_usage_megabytes"] > 0
        assert 0 < v[PREFIX + "system_memory_usage_percentage"] <= 100
        assert v[PREFIX + "disk_usage_megabytes"] > 0
        assert v[PREFIX + "disk_available_megabytes"] > 0
        assert 0 < v[PREFIX + "disk_usage_percentage"] <= 100
        assert v[PREFIX + "network_receive_megabytes"] >= 0
        assert v[PREFIX + "network_transmit_megabytes"] >= 0


BUSY = r"""
import multiprocessing, os, sys, time
from formula_foundry.tracking import get_tracker

def spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass

if __name__ == "__main__":
    busy = sys.argv[1] == "busy"
    with get_tracker().start_run(log_system_metrics=True):
        if busy:
            procs = [multiprocessing.Process(target=spin, args=(1.6,)) for _ in range(os.cpu_count() or 1)]
            [p.start() for p in procs]
            [p.join() for p in procs]
        else:
            time.sleep(1.6)
"""


def test_a_busy_loop_shows_cpu_use(project: Path):
    """Every core spinning shows in ``system/cpu_utilization_percentage``; sleeping does not."""
    configure(project, system_metrics={"interval_seconds": 0.25})
    script = project / "busy.py"
    script.write_text(BUSY)
    means = {}
    for mode in ("idle", "busy"):
        for journal in (project / "data" / "runs").glob("*/tracking/*.jsonl"):
            journal.unlink()
        done = subprocess.run([sys.executable, str(script), mode], cwd=project, env=subprocess_env(),
                              capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        values = [p["values"][PREFIX + "cpu_utilization_percentage"] for p in system_points(only_journal(project))]
        assert values, mode
        means[mode] = (statistics.mean(values), max(values))
    (idle_mean, _), (busy_mean, busy_max) = means["idle"], means["busy"]
    # Other programs share this machine: a saturated machine shows ~100 either way.
    assert busy_max >= 90 or busy_mean > idle_mean + 15, means


def test_one_thread_for_every_run_and_none_after_the_last_ends(project: Path):
    """Runs share the process's one sampler thread; it stops when the last subscribing run ends."""
    configure(project, system_metrics={"interval_seconds": 0.1})
    code = r"""
import threading, time
from formula_foundry.tracking import get_tracker

def samplers():
    return [t for t in threading.enumerate() if t.name == "ff-system-metrics"]

tracker = get_tracker()
with tracker.start_run(run_name="outer", log_system_metrics=True):
    assert len(samplers()) == 1
    with tracker.start_run(run_name="inner", nested=True, log_system_metrics=True):
        assert len(samplers()) == 1
        time.sleep(0.35)
    assert len(samplers()) == 1
    time.sleep(0.25)
time.sleep(0.05)
assert samplers() == [], samplers()
with tracker.start_run(run_name="plain"):
    time.sleep(0.25)
    assert samplers() == []
print("ok")
"""
    assert run_child(project, code).stdout.strip() == b"ok"
    journals = {JournalReader(j).records().__next__()["run_name"]: j
                for j in (project / "data" / "runs").glob("*/tracking/*.jsonl")}
    assert len(system_points(journals["outer"])) >= 4
    assert len(system_points(journals["inner"])) >= 2
    assert system_points(journals["plain"]) == []


def test_config_enables_it_and_the_argument_overrides(project: Path):
    configure(project, system_metrics={"enabled": True, "interval_seconds": 0.1})
    code = ("import time\nfrom formula_foundry.tracking import get_tracker\nt = get_tracker()\n"
            "with t.start_run(run_name='on'):\n    time.sleep(0.35)\n"
            "with t.start_run(run_name='off', log_system_metrics=False):\n    time.sleep(0.35)\n")
    run_child(project, code)
    journals = {next(JournalReader(j).records())["run_name"]: j
                for j in (project / "data" / "runs").glob("*/tracking/*.jsonl")}
    assert len(system_points(journals["on"])) >= 2
    assert system_points(journals["off"]) == []


def test_importing_the_producer_loads_no_sampler():
    """``import formula_foundry.tracking`` stays light: no psutil, no pynvml, not even these modules."""
    code = ("import sys, formula_foundry.tracking\n"
            "print([m for m in ('psutil', 'pynvml', 'formula_foundry.tracking.system_metrics', "
            "'formula_foundry.tracking.console', 'subprocess') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, timeout=60)
    assert done.stdout.strip() == b"[]", done.stderr


# --------------------------------------------------------------------------- config

@pytest.mark.parametrize(("tracking", "key", "words"), [
    ({"system_metrics": {"interval_seconds": 0.01}}, "tracking.system_metrics.interval_seconds", "between 0.1"),
    ({"system_metrics": {"interval_seconds": "10"}}, "tracking.system_metrics.interval_seconds", "expected"),
    ({"system_metrics": {"enabled": "yes"}}, "tracking.system_metrics.enabled", "expected bool"),
    ({"system_metrics": {"samples_before_logging": 0}}, "tracking.system_metrics.samples_before_logging",
     "(samples)"),
    ({"system_metrics": {"samples_before_logging": 2.5}}, "tracking.system_metrics.samples_before_logging",
     "expected int"),
    ({"system_metrics": {"colour": 1}}, "tracking.system_metrics.colour", "unknown key"),
    ({"system_metrics": True}, "tracking.system_metrics", "expected a mapping"),
])
def test_config_errors_name_the_key(project: Path, tracking: dict, key: str, words: str):
    path = configure(project, **tracking)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert f"'{key}'" in str(err.value) and words in str(err.value), str(err.value)


def test_defaults_are_mlflows(project: Path):
    cfg = load_config(project / "config" / "mlflow.yaml", env={}).tracking.system_metrics
    assert (cfg.enabled, cfg.interval_seconds, cfg.samples_before_logging) == (False, 10.0, 1)


def test_docs_list_every_key():
    import re

    doc = (REPO / "docs" / "configuration.md").read_text()
    for key, default in (("system_metrics.enabled", False), ("system_metrics.interval_seconds", 10.0),
                         ("system_metrics.samples_before_logging", 1)):
        row = re.search(rf"^\| `{re.escape(key)}` \| `([^`]*)` \|", doc, re.M)
        assert row and yaml.safe_load(row.group(1)) == default, key
    assert "| `tracking.system_metrics.interval_seconds` | 0.1 – 3600 |" in doc


# --------------------------------------------------------------------------- the pure parts

def test_points_average_and_round_as_mlflow():
    """``samples_before_logging`` samples averaged, rounded to 0.1; network cumulative, not averaged."""
    points = Points(samples_before_logging=3)
    base = Reading(cpu=(0.0, 0.0), memory=None, network=(1e6, 2e6), gpus=None)
    points.baseline(base)
    outs = []
    for i, busy in enumerate((10.0, 20.0, 60.0, 50.0, 50.0, 50.0), start=1):
        reading = Reading(cpu=(sum((10.0, 20.0, 60.0, 50.0, 50.0, 50.0)[:i]), 100.0 * i), memory=(3e9, 4e9),
                          network=(1e6 + i * 1e6, 2e6), gpus=[Gpu(50.0 + i, 1e9, 4e9, 100.0, 400.0)])
        outs.append(points.add(reading, (5e9, 5e9, 50.04)))
        del busy
    assert outs[0] is None and outs[1] is None and outs[3] is None and outs[4] is None
    first, second = outs[2], outs[5]
    assert first[PREFIX + "cpu_utilization_percentage"] == 30.0
    assert second[PREFIX + "cpu_utilization_percentage"] == 50.0
    assert first[PREFIX + "system_memory_usage_megabytes"] == 3000.0
    assert first[PREFIX + "system_memory_usage_percentage"] == 75.0
    assert first[PREFIX + "disk_usage_percentage"] == 50.0
    assert first[PREFIX + "network_receive_megabytes"] == 3.0  # the latest, since the baseline
    assert second[PREFIX + "network_receive_megabytes"] == 6.0
    assert first[PREFIX + "gpu_0_utilization_percentage"] == 52.0
    assert first[PREFIX + "gpu_0_memory_usage_percentage"] == 25.0
    assert first[PREFIX + "gpu_0_power_usage_watts"] == 100.0
    assert first[PREFIX + "gpu_0_power_usage_percentage"] == 25.0
    assert points.step == 2


def test_proc_parsers_follow_psutil():
    stat = "cpu  100 5 50 800 20 3 2 1 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
    assert _cpu_from_proc_stat(stat) == (161.0, 981.0)  # guest (7) is inside user already
    meminfo = ("MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 600 kB\nBuffers: 50 kB\nCached: 300 kB\n"
               "SReclaimable: 50 kB\n")
    assert _memory_from_meminfo(meminfo) == (500 * 1024.0, 1000 * 1024.0)
    net = ("Inter-|   Receive  |  Transmit\n face |bytes packets|bytes\n"
           "    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n  eth0: 2000 5 0 0 0 0 0 0 300 4 0 0 0 0 0 0\n")
    assert _network_from_net_dev(net) == (2100.0, 400.0)


def test_nvidia_smi_output_parses_with_missing_fields():
    text = "0, 37, 1024, 81559, 120.50, 700.00\n1, 0, 0, 81559, [N/A], [Not Supported]\n"
    gpus = parse_nvidia_smi(text)
    assert gpus[0] == Gpu(37.0, 1024 * 2**20, 81559 * 2**20, 120.5, 700.0)
    assert gpus[1].power is None and gpus[1].power_limit is None and gpus[1].utilization == 0.0


def test_a_failing_run_warns_once_and_the_sampler_stops():
    """A log call that fails (not an ended run) is reported once; the thread leaves; nothing is raised."""
    calls = []

    def broken(metrics, step):
        calls.append(step)
        raise OSError("disk on fire")

    sampler = Sampler()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler.subscribe(broken, interval=0.05, name="run x")
        deadline = time.monotonic() + 5
        while sampler.running and time.monotonic() < deadline:
            time.sleep(0.02)
    assert not sampler.running
    assert calls == [0]
    messages = [str(w.message) for w in caught if issubclass(w.category, SystemMetricsWarning)]
    assert len(messages) == 1 and "run x" in messages[0] and "disk on fire" in messages[0]


def test_a_failing_source_is_dropped_with_one_warning(monkeypatch):
    from formula_foundry.tracking import system_metrics

    real = system_metrics._read

    def flaky(path):
        if path == "/proc/meminfo":
            raise PermissionError("no")
        return real(path)

    if not Path("/proc/stat").exists():
        pytest.skip("no /proc on this system")
    monkeypatch.setattr(system_metrics, "_read", flaky)
    got = []
    sampler = Sampler()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sub = sampler.subscribe(lambda m, s: got.append(m), interval=0.05)
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        sampler.unsubscribe(sub)
    assert len(got) >= 3
    assert all(PREFIX + "cpu_utilization_percentage" in m for m in got)
    assert not any(PREFIX + "system_memory_usage_megabytes" in m for m in got)
    memory_warnings = [w for w in caught if "memory" in str(w.message)]
    assert len(memory_warnings) == 1
    assert not sampler.running


def test_unsubscribe_waits_for_a_point_being_written():
    """After unsubscribe returns, no point of that run is written (so none follows its run_end)."""
    inside = threading.Event()
    release = threading.Event()
    written = []

    def slow(metrics, step):
        inside.set()
        release.wait(5)
        written.append(step)

    sampler = Sampler()
    sub = sampler.subscribe(slow, interval=0.05)
    assert inside.wait(5)
    threading.Timer(0.3, release.set).start()
    t0 = time.monotonic()
    sampler.unsubscribe(sub)
    assert time.monotonic() - t0 >= 0.25  # it waited for the write in flight
    count = len(written)  # the point in flight, and maybe one more that won the lock first
    time.sleep(0.2)
    assert len(written) == count >= 1


# --------------------------------------------------------------------------- GPUs

def _gpu_tooling() -> str | None:
    try:
        import pynvml  # noqa: F401
        return "pynvml"
    except ImportError:
        return "nvidia-smi" if shutil.which("nvidia-smi") else None


@pytest.mark.skipif(_gpu_tooling() is None, reason="no NVIDIA GPU tooling here: neither pynvml "
                    "(pip install nvidia-ml-py) nor nvidia-smi is available, so GPU metrics cannot be sampled")
def test_gpu_metrics_under_mlflows_names():
    backend = gpu_backend()
    if backend is None:
        pytest.skip(f"{_gpu_tooling()} is present but reports no usable GPU (no driver or no device)")
    gpus = backend.read()
    backend.close()
    assert gpus
    points = Points()
    points.baseline(Reading(None, None, None, None))
    out = points.add(Reading(cpu=None, memory=None, network=None, gpus=gpus), None)
    for i in range(len(gpus)):
        assert 0 <= out[f"{PREFIX}gpu_{i}_utilization_percentage"] <= 100
        assert out[f"{PREFIX}gpu_{i}_memory_usage_megabytes"] >= 0
        assert 0 <= out[f"{PREFIX}gpu_{i}_memory_usage_percentage"] <= 100
        if f"{PREFIX}gpu_{i}_power_usage_watts" in out:
            assert out[f"{PREFIX}gpu_{i}_power_usage_watts"] > 0
