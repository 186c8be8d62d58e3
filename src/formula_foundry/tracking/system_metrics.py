"""System metrics under MLflow's names, sampled into the journals of the runs that ask for them.

``start_run(log_system_metrics=True)`` (or ``tracking.system_metrics.enabled``)
subscribes the run to the process's one sampler thread: a daemon thread started
by the first subscribing run and stopped when the last one ends. Every
``interval_seconds`` it reads the machine once and, for each run due, logs one
point per metric through ``run.log_metrics`` (the run's normal metric path, so
the journal format is unchanged). Each run counts its own steps from 0.

What MLflow 3.17's ``mlflow.system_metrics`` does, and what we do
    ============================================  =========================================================
    metric (``system/`` + ...)                     source
    ============================================  =========================================================
    ``cpu_utilization_percentage``                 busy share of all CPUs since the run's previous sample
                                                   (``/proc/stat``; psutil's ``cpu_percent`` formula)
    ``system_memory_usage_megabytes``              psutil's ``virtual_memory().used`` / 1e6
                                                   (``/proc/meminfo``: total - free - buffers - cached - SReclaimable)
    ``system_memory_usage_percentage``             used / total * 100
    ``disk_usage_megabytes``                       psutil's ``disk_usage().used`` / 1e6, of the file system
    ``disk_available_megabytes``                   holding the run directory (MLflow: ``/``), ``os.statvfs``
    ``disk_usage_percentage``                      used / (used + available) * 100
    ``network_receive_megabytes``                  bytes received by every interface since the run started,
    ``network_transmit_megabytes``                 / 1e6 (``/proc/net/dev``); cumulative, never averaged
    ``gpu_{i}_utilization_percentage``             NVML ``nvmlDeviceGetUtilizationRates().gpu``
    ``gpu_{i}_memory_usage_megabytes``             NVML memory used / 1e6
    ``gpu_{i}_memory_usage_percentage``            used / total * 100
    ``gpu_{i}_power_usage_watts``                  NVML power / 1000
    ``gpu_{i}_power_usage_percentage``             power / enforced power limit * 100
    ============================================  =========================================================

Steps and averaging as MLflow's ``SystemMetricsMonitor``: ``samples_before_logging``
samples (default 1) are averaged into one point, rounded to one decimal
(network: the latest value, not averaged); points get steps 0, 1, 2, ... A
run's first point comes one interval after it started (MLflow logs its first
sample after one interval too); a run that ends drops a partial average, as
MLflow's ``finish()`` does.

Sources: ``/proc`` and ``os.statvfs`` (standard library) on Linux; psutil where
there is no ``/proc`` and psutil imports. GPUs: pynvml (``nvidia-ml-py``) where
it imports and NVML initialises, else one ``nvidia-smi --query-gpu`` call per
sample (with a timeout), else none. Nothing here is imported before a run
asks for system metrics: psutil and pynvml only inside the sampler thread.

Never in the program's way: sampling holds no lock a logging call needs; the
thread takes the journal's lock only for its own append, like any call. A
source that fails (a file it cannot read, an NVML error) is reported once with
``warnings.warn`` (:class:`SystemMetricsWarning`) and dropped; the rest go on.
An unexpected error in the thread warns once and stops sampling; it never
reaches the program. :meth:`Sampler.unsubscribe` returns only when no point of
that run is being written, so nothing follows the run's end record.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from formula_foundry.errors import RunStateError

__all__ = [
    "PREFIX",
    "Sampler",
    "Subscription",
    "SystemMetricsWarning",
    "gpu_backend",
    "sampler",
]

PREFIX = "system/"
_MB = 1e6
_NVIDIA_SMI_QUERY = "index,utilization.gpu,memory.used,memory.total,power.draw,power.limit"
_MIB = 1 << 20


class SystemMetricsWarning(RuntimeWarning):
    """A system metrics source failed; it is dropped and the run goes on."""


def _warn(message: str) -> None:
    warnings.warn(f"ff system metrics: {message}", SystemMetricsWarning, stacklevel=2)


# --------------------------------------------------------------------------- readings (one per wake)

class Gpu(NamedTuple):
    utilization: float | None  # percent
    memory_used: float | None  # bytes
    memory_total: float | None  # bytes
    power: float | None  # watts
    power_limit: float | None  # watts


class Reading(NamedTuple):
    """One look at the machine. A part is None when its source is missing or was dropped."""

    cpu: tuple[float, float] | None  # (busy, total) CPU time counters, any unit
    memory: tuple[float, float] | None  # (used, total) bytes
    network: tuple[float, float] | None  # (received, transmitted) bytes since boot, every interface
    gpus: list[Gpu] | None


def _cpu_from_proc_stat(text: str) -> tuple[float, float]:
    """psutil's busy/total of the first ``cpu`` line: guest times are already in user/nice."""
    fields = [float(x) for x in text.split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0.0] * 8)[:8]
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return total - idle - iowait, total


def _memory_from_meminfo(text: str) -> tuple[float, float]:
    """psutil's ``virtual_memory()`` (total, used) on Linux, from ``/proc/meminfo`` (kB values)."""
    info: dict[str, float] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            info[name] = float(parts[0]) * 1024
    total, free = info["MemTotal"], info["MemFree"]
    cached = info.get("Cached", 0.0) + info.get("SReclaimable", 0.0)
    used = total - free - cached - info.get("Buffers", 0.0)
    if used < 0:
        used = total - free
    return used, total


def _network_from_net_dev(text: str) -> tuple[float, float]:
    """Bytes received and transmitted by every interface (as ``psutil.net_io_counters()``)."""
    received = transmitted = 0.0
    for line in text.splitlines()[2:]:
        _, sep, rest = line.partition(":")
        fields = rest.split()
        if sep and len(fields) >= 9:
            received += float(fields[0])
            transmitted += float(fields[8])
    return received, transmitted


def disk_usage(path: str | os.PathLike) -> tuple[float, float, float]:
    """(used bytes, available bytes, percent) of the file system holding ``path``: psutil's ``disk_usage``."""
    st = os.statvfs(path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    free = st.f_bavail * st.f_frsize
    total_user = used + free
    return used, free, (used / total_user * 100 if total_user else 0.0)


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


class HostSource:
    """CPU, memory and network counters: ``/proc`` on Linux, else psutil (if it imports), else none.

    Each part that fails is reported once and dropped (``None`` from then on).
    """

    def __init__(self) -> None:
        self.psutil: Any = None
        self.parts: dict[str, Callable[[], tuple[float, float]]] = {}
        if os.path.exists("/proc/stat"):
            self.parts = {
                "cpu": lambda: _cpu_from_proc_stat(_read("/proc/stat")),
                "memory": lambda: _memory_from_meminfo(_read("/proc/meminfo")),
                "network": lambda: _network_from_net_dev(_read("/proc/net/dev")),
            }
            return
        try:
            import psutil  # noqa: PLC0415 - optional, and only once a run asked for system metrics
        except ImportError:
            _warn("no /proc and no psutil: CPU, memory and network are not sampled (pip install psutil)")
            return
        self.psutil = psutil

        def cpu() -> tuple[float, float]:
            t = psutil.cpu_times()
            total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
            return total - t.idle - getattr(t, "iowait", 0.0), total

        def memory() -> tuple[float, float]:
            vm = psutil.virtual_memory()
            return float(vm.used), float(vm.total)

        def network() -> tuple[float, float]:
            io = psutil.net_io_counters()
            return float(io.bytes_recv), float(io.bytes_sent)

        self.parts = {"cpu": cpu, "memory": memory, "network": network}

    def read(self) -> dict[str, tuple[float, float] | None]:
        out: dict[str, tuple[float, float] | None] = {"cpu": None, "memory": None, "network": None}
        for name, fn in list(self.parts.items()):
            try:
                out[name] = fn()
            except Exception as exc:  # noqa: BLE001 - a source that fails is dropped, never fatal
                del self.parts[name]
                _warn(f"reading {name} failed ({type(exc).__name__}: {exc}); {name} is no longer sampled")
        return out


# --------------------------------------------------------------------------- GPUs

class NvmlGpus:
    """NVIDIA GPUs through pynvml (``nvidia-ml-py``): ~40 µs a sample."""

    name = "pynvml"

    def __init__(self, pynvml: Any) -> None:
        self.nvml = pynvml
        pynvml.nvmlInit()
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        self.failed: set[str] = set()

    def _get(self, what: str, fn: Callable[[], Any]) -> Any:
        if what in self.failed:
            return None
        try:
            return fn()
        except self.nvml.NVMLError as exc:
            self.failed.add(what)  # e.g. power on a GPU that does not report it: once, then never again
            _warn(f"NVML {what} failed ({exc}); it is no longer sampled")
            return None

    def read(self) -> list[Gpu]:
        nvml, out = self.nvml, []
        for i, handle in enumerate(self.handles):
            memory = self._get(f"gpu {i} memory", lambda h=handle: nvml.nvmlDeviceGetMemoryInfo(h))
            util = self._get(f"gpu {i} utilization", lambda h=handle: nvml.nvmlDeviceGetUtilizationRates(h))
            power = self._get(f"gpu {i} power", lambda h=handle: nvml.nvmlDeviceGetPowerUsage(h))
            limit = self._get(f"gpu {i} power limit", lambda h=handle: nvml.nvmlDeviceGetEnforcedPowerLimit(h))
            out.append(Gpu(
                utilization=None if util is None else float(util.gpu),
                memory_used=None if memory is None else float(memory.used),
                memory_total=None if memory is None else float(memory.total),
                power=None if power is None else power / 1000,
                power_limit=None if limit is None else limit / 1000,
            ))
        return out

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001, S110 - best effort at the thread's end
            pass


def _smi_number(text: str, scale: float = 1.0) -> float | None:
    """One ``nvidia-smi`` csv field: a number, or None for ``[N/A]``, ``[Not Supported]``, ..."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value * scale if math.isfinite(value) else None


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """The output of ``nvidia-smi --query-gpu=<_NVIDIA_SMI_QUERY> --format=csv,noheader,nounits`` (MiB, W)."""
    gpus: list[tuple[int, Gpu]] = []
    for line in text.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 6:
            raise ValueError(f"unexpected nvidia-smi line {line!r:.120}")
        index = int(fields[0])
        gpus.append((index, Gpu(utilization=_smi_number(fields[1]), memory_used=_smi_number(fields[2], _MIB),
                                memory_total=_smi_number(fields[3], _MIB), power=_smi_number(fields[4]),
                                power_limit=_smi_number(fields[5]))))
    return [gpu for _, gpu in sorted(gpus)]


class SmiGpus:
    """NVIDIA GPUs through one ``nvidia-smi`` call per sample (~30 ms each; pynvml is ~1000x cheaper)."""

    name = "nvidia-smi"

    def __init__(self, executable: str, timeout: float) -> None:
        self.command = [executable, f"--query-gpu={_NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"]
        self.timeout = timeout
        self.read()  # fails now (no driver, no GPU) rather than at every sample

    def read(self) -> list[Gpu]:
        done = subprocess.run(self.command, capture_output=True, text=True, timeout=self.timeout,
                              stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"nvidia-smi exited {done.returncode}: {done.stderr.strip()[:200]}")
        return parse_nvidia_smi(done.stdout)

    def close(self) -> None:
        pass


def gpu_backend(*, timeout: float = 5.0) -> NvmlGpus | SmiGpus | None:
    """pynvml where it imports and NVML initialises, else ``nvidia-smi`` where it answers, else None."""
    try:
        import pynvml  # noqa: PLC0415 - optional (nvidia-ml-py), imported only by the sampler
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            return NvmlGpus(pynvml)
        except Exception:  # noqa: BLE001, S110 - no driver or no GPU: try nvidia-smi, then none
            pass
    executable = shutil.which("nvidia-smi")
    if executable is not None:
        try:
            return SmiGpus(executable, timeout)
        except Exception:  # noqa: BLE001, S110 - nvidia-smi present but no usable GPU
            pass
    return None


# --------------------------------------------------------------------------- one run's points (pure)

def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 1)


class Points:
    """One run's aggregation: readings in, MLflow's metric dicts out (no I/O, no thread).

    ``baseline`` sets the counters that later samples are deltas of (CPU time,
    network bytes), as MLflow's monitors set theirs when they start.
    """

    def __init__(self, samples_before_logging: int = 1) -> None:
        self.samples_before_logging = samples_before_logging
        self.step = 0
        self._cpu: tuple[float, float] | None = None
        self._network: tuple[float, float] | None = None
        self._averaged: dict[str, list[float]] = {}
        self._latest: dict[str, float] = {}
        self._count = 0

    def baseline(self, reading: Reading) -> None:
        self._cpu = reading.cpu
        self._network = reading.network

    def add(self, reading: Reading, disk: tuple[float, float, float] | None) -> dict[str, float] | None:
        """Take one sample; returns the metrics to log (``system/...`` -> value) once enough are in."""
        sample: dict[str, float] = {}
        if reading.cpu is not None and self._cpu is not None:
            busy = reading.cpu[0] - self._cpu[0]
            total = reading.cpu[1] - self._cpu[1]
            sample["cpu_utilization_percentage"] = round(min(max(busy / total * 100, 0.0), 100.0), 1) \
                if total > 0 else 0.0
        if reading.cpu is not None:
            self._cpu = reading.cpu
        if reading.memory is not None:
            used, total = reading.memory
            sample["system_memory_usage_megabytes"] = used / _MB
            sample["system_memory_usage_percentage"] = used / total * 100 if total else 0.0
        if disk is not None:
            used, free, percent = disk
            sample["disk_usage_percentage"] = round(percent, 1)
            sample["disk_usage_megabytes"] = used / _MB
            sample["disk_available_megabytes"] = free / _MB
        for i, gpu in enumerate(reading.gpus or ()):
            if gpu.memory_used is not None and gpu.memory_total:
                sample[f"gpu_{i}_memory_usage_percentage"] = round(gpu.memory_used / gpu.memory_total * 100, 1)
                sample[f"gpu_{i}_memory_usage_megabytes"] = gpu.memory_used / _MB
            if gpu.utilization is not None:
                sample[f"gpu_{i}_utilization_percentage"] = gpu.utilization
            if gpu.power is not None:
                sample[f"gpu_{i}_power_usage_watts"] = gpu.power
                if gpu.power_limit:
                    sample[f"gpu_{i}_power_usage_percentage"] = gpu.power / gpu.power_limit * 100
        for key, value in sample.items():
            self._averaged.setdefault(key, []).append(value)
        if reading.network is not None:
            if self._network is None:
                self._network = reading.network
            # Cumulative since the run's start, not averaged (MLflow's NetworkMonitor).
            self._latest["network_receive_megabytes"] = (reading.network[0] - self._network[0]) / _MB
            self._latest["network_transmit_megabytes"] = (reading.network[1] - self._network[1]) / _MB
        self._count += 1
        if self._count < self.samples_before_logging:
            return None
        out = {PREFIX + key: _mean(values) for key, values in self._averaged.items()}
        out.update((PREFIX + key, value) for key, value in self._latest.items())
        self._averaged, self._latest, self._count = {}, {}, 0
        self.step += 1
        return out


# --------------------------------------------------------------------------- the thread

class Subscription:
    """One run's place in the sampler: where its points go, and when the next one is due."""

    def __init__(self, log: Callable[[Mapping[str, float], int], None], disk_path: str | os.PathLike | None,
                 interval: float, samples_before_logging: int, name: str) -> None:
        self.log = log  # run.log_metrics(metrics, step)
        self.disk_path = disk_path
        self.interval = interval
        self.points = Points(samples_before_logging)
        self.name = name
        self.due: float | None = None  # monotonic time of the next sample; None: baseline not taken yet
        self.active = True
        self.lock = threading.Lock()  # held while one of its points is written; unsubscribe waits for it


class Sampler:
    """The process's one sampler thread and the runs it serves (:func:`sampler` gives the instance).

    The logic it runs is :class:`Points` (aggregation) and the sources above; the
    thread only wakes at the earliest due time, reads once, and hands the reading
    to every run that is due.
    """

    def __init__(self, *, gpu_timeout: float = 5.0) -> None:
        self._cond = threading.Condition()
        self._subs: list[Subscription] = []
        self._thread: threading.Thread | None = None
        self._gpu_timeout = gpu_timeout
        self._disk_failed: set[str] = set()
        self.gpu_source: str | None = None  # "pynvml" | "nvidia-smi" | None, once the thread has looked

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def subscribe(self, log: Callable[[Mapping[str, float], int], None], *, interval: float,
                  disk_path: str | os.PathLike | None = None, samples_before_logging: int = 1,
                  name: str = "run") -> Subscription:
        """Start sampling for one run: ``log(metrics, step)`` gets its points (``run.log_metrics``)."""
        sub = Subscription(log, disk_path, interval, samples_before_logging, name)
        with self._cond:
            self._subs.append(sub)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="ff-system-metrics", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return sub

    def unsubscribe(self, sub: Subscription, *, join_timeout: float = 2.0) -> None:
        """Stop one run's sampling; returns once none of its points is being written. The last
        subscriber's leaving stops the thread (joined for at most ``join_timeout`` seconds)."""
        with sub.lock:
            sub.active = False
        with self._cond:
            if sub in self._subs:
                self._subs.remove(sub)
            thread = self._thread if not self._subs else None
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(join_timeout)

    # -- the thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - never let the program see it
            _warn(f"the sampler stopped after an unexpected error ({type(exc).__name__}: {exc})")
            with self._cond:
                self._subs.clear()
        finally:
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None
                    if self._subs:  # subscribed while this thread was leaving: a fresh one serves them
                        self._thread = threading.Thread(target=self._loop, name="ff-system-metrics",
                                                        daemon=True)
                        self._thread.start()

    def _run(self) -> None:
        host = HostSource()
        gpus = gpu_backend(timeout=self._gpu_timeout)
        self.gpu_source = None if gpus is None else gpus.name
        try:
            self._serve_all(host, gpus)
        finally:
            if gpus is not None:
                gpus.close()

    def _serve_all(self, host: HostSource, gpus: NvmlGpus | SmiGpus | None) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._subs:
                        return
                    now = time.monotonic()
                    new = [s for s in self._subs if s.due is None]
                    due = [s for s in self._subs if s.due is not None and s.due <= now + 0.001]
                    if new or due:
                        break
                    self._cond.wait(min(s.due for s in self._subs) - now)
            reading, gpus = self._read(host, gpus)
            now = time.monotonic()
            for sub in new:
                sub.points.baseline(reading)
                sub.due = now + sub.interval
            for sub in due:
                self._serve(sub, reading)
                # The next sample one interval on; after a stall, the next interval from now.
                sub.due = sub.due + sub.interval if sub.due + sub.interval > now else now + sub.interval

    @staticmethod
    def _read(host: HostSource, gpus: NvmlGpus | SmiGpus | None) -> tuple[Reading, NvmlGpus | SmiGpus | None]:
        """One reading, and the GPU source still in use (None once it failed)."""
        parts = host.read()
        gpu_list = None
        if gpus is not None:
            try:
                gpu_list = gpus.read()
            except Exception as exc:  # noqa: BLE001 - dropped, never fatal
                _warn(f"reading GPUs through {gpus.name} failed ({type(exc).__name__}: {exc}); "
                      "GPUs are no longer sampled")
                gpus.close()
                gpus = None
        return Reading(cpu=parts.get("cpu"), memory=parts.get("memory"), network=parts.get("network"),
                       gpus=gpu_list), gpus

    def _disk(self, path: str | os.PathLike | None) -> tuple[float, float, float] | None:
        key = str(path if path is not None else os.sep)
        if key in self._disk_failed:
            return None
        try:
            return disk_usage(key)
        except OSError as exc:
            self._disk_failed.add(key)
            _warn(f"disk usage of {key} failed ({exc}); disk metrics of runs there are no longer sampled")
            return None

    def _serve(self, sub: Subscription, reading: Reading) -> None:
        metrics = sub.points.add(reading, self._disk(sub.disk_path))
        if not metrics:
            return
        with sub.lock:
            if not sub.active:
                return
            try:
                sub.log(metrics, sub.points.step - 1)
            except Exception as exc:  # noqa: BLE001 - a run that cannot take them stops sampling
                sub.active = False
                if not isinstance(exc, RunStateError):  # ended or forked: nothing to say
                    _warn(f"logging system metrics to {sub.name} failed ({type(exc).__name__}: {exc}); "
                          "that run samples no more")
        if not sub.active:
            with self._cond:
                if sub in self._subs:
                    self._subs.remove(sub)


_sampler: Sampler | None = None
_sampler_lock = threading.Lock()


def sampler() -> Sampler:
    """The process's sampler (a new one in a forked child: threads do not survive ``fork``)."""
    global _sampler
    with _sampler_lock:
        if _sampler is None:
            _sampler = Sampler()
        return _sampler


def _forget_after_fork() -> None:
    global _sampler, _sampler_lock
    _sampler = None
    _sampler_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
