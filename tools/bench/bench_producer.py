"""Producer cost per event: ``run.log_metric`` under each fsync policy vs the alternatives; import cost.

Options, each timed over N calls in a fresh run (run start/end not timed):

* ``ff fsync=always|interval|never``: ``get_tracker(cfg).start_run()`` then
  ``run.log_metric("loss", value, step=i)`` (validation, lock, seq, checksum, one
  ``os.write``; the fsync policy from the config).
* ``bare``: the same record members serialised by ``orjson`` and appended with a
  flush (``f.write(orjson.dumps(d) + b"\\n"); f.flush()``): no checksum, no
  validation, no lock. The floor any JSONL logger pays.
* ``mlflow.log_metric`` into a SQLite store (one transaction per call).
* MLflow async: ``log_metric(..., synchronous=False)`` for N events, then
  ``mlflow.flush_async_logging()``; cost = time until flushed / N.
* wandb offline ``run.log`` where ``import wandb`` works (never installed by us).

Ours and bare run interleaved in one child, rounds rotating the order, so load
drift on a shared machine hits every option alike; the bare ratio is taken per
round (paired). MLflow and wandb run in their own children so their threads and
imports never share an interpreter with ours. Import cost: each module imported
in a fresh interpreter (``time.perf_counter`` and ``time.process_time`` around the
import, ``VmRSS`` before and after), bytecode cached for both (:func:`import_env`).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Row,
    Stats,
    child_env,
    emit,
    fmt_num,
    fmt_rate,
    fmt_us,
    fresh_store,
    progress,
    run_child,
    smoke,
    template_store,
    write_project,
)

FF_POLICIES = ("always", "interval", "never")
DEFAULT_POLICY = "interval"

# Events per timed run. fsync=always pays a disk flush per event (~ms here), MLflow a transaction.
FULL = {"n": 100_000, "n_always": 1_000, "n_mlflow": 200, "n_async": 300, "n_wandb": 2_000, "repeats": 5}
QUICK = {"n": 20_000, "n_always": 200, "n_mlflow": 20, "n_async": 30, "n_wandb": 500, "repeats": 3}
SMOKE = {"n": 2_000, "n_always": 20, "n_mlflow": 5, "n_async": 5, "n_wandb": 50, "repeats": 1}  # run.py --smoke

TARGET_VS_MLFLOW = 1000.0  # ours at least this many times faster per event
TARGET_VS_BARE = 2.0  # ours at most this many times the bare append
TARGET_IMPORT_S = 0.100


# --------------------------------------------------------------------------- timed loops (child side)

def time_ff(run, n: int) -> tuple[float, float]:
    """Wall and CPU seconds per ``run.log_metric`` call over ``n`` calls."""
    log_metric = run.log_metric
    cpu, start = time.thread_time(), time.perf_counter()
    for i in range(n):
        log_metric("loss", i * 0.001, step=i)
    return (time.perf_counter() - start) / n, (time.thread_time() - cpu) / n


def time_bare(path: Path, n: int) -> tuple[float, float]:
    """Wall and CPU seconds per event of the bare loop: build the same record, orjson, append, flush."""
    import orjson

    dumps, clock = orjson.dumps, time.time
    with open(path, "ab") as fh:
        write, flush = fh.write, fh.flush
        cpu, start = time.thread_time(), time.perf_counter()
        for i in range(n):
            write(dumps({"v": 1, "seq": i, "ts": int(clock() * 1000), "type": "metric", "key": "loss",
                         "value": i * 0.001, "step": i}) + b"\n")
            flush()
        return (time.perf_counter() - start) / n, (time.thread_time() - cpu) / n


def child_ff(args: argparse.Namespace) -> dict:
    from formula_foundry.tracking import get_tracker

    work = Path(args.work)
    trackers = {p: get_tracker(write_project(work / f"ff-{p}", fsync=p)) for p in FF_POLICIES}
    sizes = {"always": args.n_always, "interval": args.n, "never": args.n, "bare": args.n}
    options = ["bare", *FF_POLICIES]
    samples: dict[str, list[float]] = {o: [] for o in options}
    cpu: dict[str, list[float]] = {o: [] for o in options}

    def one(option: str, n: int) -> tuple[float, float]:
        if option == "bare":
            path = work / "bare" / "bare.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                return time_bare(path, n)
            finally:
                path.unlink()
        with trackers[option].start_run(run_name=f"bench-{option}") as run:
            cost = time_ff(run, n)
        shutil.rmtree(run.run_dir, ignore_errors=True)
        return cost

    for option in options:  # warm-up: code paths, page cache, allocator
        one(option, max(100, sizes[option] // 10))
    for r in range(args.repeats):
        for option in options[r % len(options):] + options[:r % len(options)]:
            wall, cpu_s = one(option, sizes[option])
            samples[option].append(wall)
            cpu[option].append(cpu_s)
    return {"samples": samples, "cpu": cpu, "sizes": sizes}


def child_mlflow(args: argparse.Namespace) -> dict:
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    work = Path(args.work)
    db = fresh_store(Path(args.template), work / "mlflow-producer" / "mlruns.db")
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    mlflow.set_experiment("bench-producer")

    def sync(n: int) -> float:
        with mlflow.start_run():
            start = time.perf_counter()
            for i in range(n):
                mlflow.log_metric("loss", i * 0.001, step=i)
            return (time.perf_counter() - start) / n

    def asynchronous(n: int) -> tuple[float, float]:
        with mlflow.start_run():
            start = time.perf_counter()
            for i in range(n):
                mlflow.log_metric("loss", i * 0.001, step=i, synchronous=False)
            returned = time.perf_counter()
            mlflow.flush_async_logging()
            flushed = time.perf_counter()
        return (flushed - start) / n, (returned - start) / n

    sync(max(5, args.n_mlflow // 10))
    asynchronous(max(5, args.n_async // 10))
    out: dict[str, list[float]] = {"mlflow_sync": [], "mlflow_async": [], "mlflow_async_call": []}
    for _ in range(args.repeats):
        out["mlflow_sync"].append(sync(args.n_mlflow))
        flushed, call = asynchronous(args.n_async)
        out["mlflow_async"].append(flushed)
        out["mlflow_async_call"].append(call)
    return {"samples": out}


def child_wandb(args: argparse.Namespace) -> dict:
    import os

    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    work = Path(args.work) / "wandb"
    work.mkdir(parents=True, exist_ok=True)

    def one(n: int) -> tuple[float, float]:
        run = wandb.init(mode="offline", dir=str(work), project="bench", reinit=True)
        start = time.perf_counter()
        for i in range(n):
            run.log({"loss": i * 0.001}, step=i)
        returned = time.perf_counter()
        run.finish()
        return (returned - start) / n, (time.perf_counter() - start) / n

    one(max(10, args.n_wandb // 10))
    calls, finished = [], []
    for _ in range(args.repeats):
        call, done = one(args.n_wandb)
        calls.append(call)
        finished.append(done)
    return {"samples": {"wandb": calls, "wandb_finished": finished}}


# Measured in a bare interpreter: nothing of ours (or json, subprocess...) is imported before the module.
_IMPORT_CODE = """
import sys, time
def rss():
    with open('/proc/self/status') as fh:
        for line in fh:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
start_modules = set(sys.modules)
before = rss()
c0, t0 = time.process_time(), time.perf_counter()
for name in sys.argv[1].split(','):
    __import__(name)
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
after = rss()
# Every module the import pulled in from outside formula_foundry (the stdlib + orjson floor).
outside = sorted(m for m in set(sys.modules) - start_modules
                 if m.split('.')[0] != 'formula_foundry' and m != '__main__')
print('{"seconds": %r, "cpu_seconds": %r, "rss_delta_kib": %d, "mlflow_loaded": %s, "modules": %d, '
      '"outside": "%s"}' % (seconds, cpu, after - before, 'true' if 'mlflow' in sys.modules else 'false',
                            len(sys.modules), ','.join(outside)))
"""


_PYCACHE = Path(tempfile.gettempdir()) / "ff-bench-cache" / "pycache"


def import_env() -> dict[str, str]:
    """Bytecode cached, as in any normal install, but outside the source tree.

    mlflow's site-packages hold ``.pyc`` files while an editable install's ``src/``
    may not (``PYTHONDONTWRITEBYTECODE=1`` in some environments): compiling our
    modules from source on every import would not be a like-for-like comparison.
    With a cache prefix both sides load bytecode written by the warm-up import.
    """
    env = child_env(PYTHONPYCACHEPREFIX=str(_PYCACHE))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _bytecode_cached(package: str) -> bool:
    """Whether an earlier run left ``package``'s bytecode under the cache prefix."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        return False
    return _PYCACHE.joinpath(*Path(spec.origin).parent.parts[1:]).is_dir()


def import_once(module: str) -> dict:
    import json

    proc = subprocess.run([sys.executable, "-c", _IMPORT_CODE, module], capture_output=True, text=True,
                          env=import_env(), timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"import {module} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the benchmark (parent side)

def run(*, quick: bool, work: Path, template: Path | None = None) -> list[Row]:
    cfg = SMOKE if smoke() else QUICK if quick else FULL
    repeats = cfg["repeats"]
    common_args = ["--work", str(work), "--repeats", str(repeats)]
    rows: list[Row] = []

    progress(f"producer: ours and bare, interleaved ({repeats} rounds after a warm-up)")
    ff = run_child("bench_producer", ["ff", *common_args, "--n", str(cfg["n"]),
                                      "--n-always", str(cfg["n_always"])])
    s, cpu, sizes = ff["samples"], ff["cpu"], ff["sizes"]
    per_event: dict[str, Stats] = {}
    notes = {"always": "fsync after every event",
             "interval": "the default: fsync at most once per second",
             "never": "fsync only at run end",
             "bare": "same record, no checksum/validation/lock"}
    for option in (*FF_POLICIES, "bare"):
        st = per_event[f"ff_{option}" if option != "bare" else "bare"] = Stats.of(s[option])
        name = "bare orjson append + flush" if option == "bare" else f"ff run.log_metric, fsync={option}"
        rows.append(_cost_row(name, st, sizes[option],
                              f"{notes[option]}; CPU {fmt_us(Stats.of(cpu[option]).median)}",
                              samples={"s_per_event": s[option], "cpu_s_per_event": cpu[option]}))

    template = template or template_store()
    progress("producer: mlflow.log_metric, sync and async")
    ml = run_child("bench_producer", ["mlflow", *common_args, "--template", str(template),
                                      "--n-mlflow", str(cfg["n_mlflow"]), "--n-async", str(cfg["n_async"])])
    ms = ml["samples"]
    per_event["mlflow_sync"] = Stats.of(ms["mlflow_sync"])
    per_event["mlflow_async"] = Stats.of(ms["mlflow_async"])
    rows.append(_cost_row("mlflow.log_metric → SQLite", per_event["mlflow_sync"], cfg["n_mlflow"],
                          "one transaction per call", samples={"s_per_event": ms["mlflow_sync"]}))
    call = Stats.of(ms["mlflow_async_call"])
    rows.append(_cost_row("mlflow async → SQLite, until flushed", per_event["mlflow_async"], cfg["n_async"],
                          f"call returns in {fmt_us(call.median)}; flush_async_logging() waits",
                          samples={"s_per_event": ms["mlflow_async"], "call_s": ms["mlflow_async_call"]}))

    if importlib.util.find_spec("wandb") is None:
        rows.append(Row("producer", "wandb offline run.log", "not installed", note="pip install wandb to compare"))
    else:
        try:
            wb = run_child("bench_producer", ["wandb", *common_args, "--n-wandb", str(cfg["n_wandb"])])
            per_event["wandb"] = Stats.of(wb["samples"]["wandb"])
            fin = Stats.of(wb["samples"]["wandb_finished"])
            rows.append(_cost_row("wandb offline run.log", per_event["wandb"], cfg["n_wandb"],
                                  f"until run.finish(): {fmt_us(fin.median)}/event",
                                  samples={"s_per_event": wb["samples"]["wandb"]}))
        except RuntimeError as exc:
            rows.append(Row("producer", "wandb offline run.log", "failed", note=str(exc).splitlines()[0][:80]))

    progress("producer: import cost, a fresh interpreter per sample")
    rows += _import_rows(repeats, quick=quick)
    rows += _target_rows(per_event, s, cpu, rows)
    return rows


def _cost_row(option: str, st: Stats, n: int, note: str, *, samples: dict) -> Row:
    return Row("producer", option, f"{fmt_us(st.median)} ({fmt_rate(1 / st.median, 'ev/s')})",
               f"{fmt_us(st.lo)} – {fmt_us(st.hi)}", f"{st.runs} × {n:,}", note, samples=samples)


def _import_rows(repeats: int, *, quick: bool = False) -> list[Row]:
    # Warm-up (page cache, the bytecode cache, see import_env); it also names the modules ours pulls in
    # from the standard library and orjson: importing those alone is the floor no code of ours can beat.
    floor = import_once("formula_foundry.tracking")["outside"]
    if not (quick and _bytecode_cached("mlflow")):
        import_once("mlflow")  # --quick skips this (seconds) when an earlier run cached mlflow's bytecode
    import_once(floor)
    modules = ("formula_foundry.tracking", "mlflow", floor)
    results: dict[str, list[dict]] = {m: [] for m in modules}
    for _ in range(repeats):
        for module in modules:
            results[module].append(import_once(module))
    rows = []
    for module in modules:
        if module == floor:
            secs = Stats.of([r["seconds"] for r in results[module]])
            cpu = Stats.of([r["cpu_seconds"] for r in results[module]])
            rows.append(Row("import", "import the stdlib + orjson modules ours uses, alone",
                            f"{fmt_num(secs.median * 1000)} ms",
                            f"{fmt_num(secs.lo * 1000)} – {fmt_num(secs.hi * 1000)} ms", f"{secs.runs} × 1",
                            f"CPU {fmt_num(cpu.median * 1000)} ms; the {len(floor.split(','))} modules ours pulls in: "
                            "the floor under ours", samples={"seconds": list(secs.values),
                                                             "cpu_seconds": list(cpu.values)}))
            continue
        secs = Stats.of([r["seconds"] for r in results[module]])
        cpu = Stats.of([r["cpu_seconds"] for r in results[module]])
        rss = Stats.of([r["rss_delta_kib"] for r in results[module]])
        loaded = any(r["mlflow_loaded"] for r in results[module])
        note = (f"CPU {fmt_num(cpu.median * 1000)} ms; RSS +{rss.median / 1024:,.1f} MB; "
                f"{results[module][0]['modules']} modules loaded")
        if module != "mlflow":
            note += f"; mlflow imported: {'YES' if loaded else 'no'}"
        rows.append(Row("import", f"import {module}", f"{fmt_num(secs.median * 1000)} ms",
                        f"{fmt_num(secs.lo * 1000)} – {fmt_num(secs.hi * 1000)} ms", f"{secs.runs} × 1", note,
                        samples={"seconds": list(secs.values), "cpu_seconds": list(cpu.values),
                                 "rss_delta_kib": list(rss.values),
                                 "mlflow_loaded": [float(r["mlflow_loaded"]) for r in results[module]]}))
    return rows


def _verdict(ok: bool, how: str) -> str:
    return f"met ({how})" if ok else f"MISSED ({how})"


def _target_rows(per_event: dict[str, Stats], ff_samples: dict, ff_cpu: dict, rows: list[Row]) -> list[Row]:
    out = []
    ours = per_event[f"ff_{DEFAULT_POLICY}"]
    ml = per_event["mlflow_sync"]
    ratio = ml.median / ours.median
    out.append(Row("target", f"producer (fsync={DEFAULT_POLICY}) vs mlflow.log_metric",
                   f"{ratio:,.0f}× faster", f"{ml.lo / ours.hi:,.0f} – {ml.hi / ours.lo:,.0f}×", "",
                   f"target ≥ {TARGET_VS_MLFLOW:,.0f}×: " + _verdict(
                       ratio >= TARGET_VS_MLFLOW,
                       f"{ratio / TARGET_VS_MLFLOW:.2f}× the target" if ratio >= TARGET_VS_MLFLOW else
                       f"short by {(1 - ratio / TARGET_VS_MLFLOW) * 100:.0f}%; ours would need "
                       f"≤ {fmt_us(ml.median / TARGET_VS_MLFLOW)}"),
                   samples={"ratio": [ratio]}))
    # Paired: round i of ours against round i of bare (they ran back to back).
    paired = [o / b for o, b in zip(ff_samples[DEFAULT_POLICY], ff_samples["bare"], strict=True)]
    pst = Stats.of(paired)
    cpu_ratio = Stats.of([o / b for o, b in zip(ff_cpu[DEFAULT_POLICY], ff_cpu["bare"], strict=True)]).median
    out.append(Row("target", f"producer (fsync={DEFAULT_POLICY}) vs bare append", f"{pst.median:.2f}× the cost",
                   f"{pst.lo:.2f} – {pst.hi:.2f}× (paired rounds)", "",
                   f"target ≤ {TARGET_VS_BARE:g}×: " + _verdict(
                       pst.median <= TARGET_VS_BARE,
                       f"{(TARGET_VS_BARE - pst.median) / TARGET_VS_BARE * 100:.0f}% headroom"
                       if pst.median <= TARGET_VS_BARE else
                       f"over by {(pst.median / TARGET_VS_BARE - 1) * 100:.0f}%")
                   + f"; CPU-time ratio {cpu_ratio:.2f}×",
                   samples={"ratio": paired, "cpu_ratio": [cpu_ratio]}))
    for policy in ("never",):
        paired_p = [o / b for o, b in zip(ff_samples[policy], ff_samples["bare"], strict=True)]
        st = Stats.of(paired_p)
        out.append(Row("target", f"producer (fsync={policy}) vs bare append", f"{st.median:.2f}× the cost",
                       f"{st.lo:.2f} – {st.hi:.2f}× (paired rounds)", "", "for reference",
                       samples={"ratio": paired_p}))
    imp = next(r for r in rows if r.option == "import formula_foundry.tracking")
    secs = Stats.of(imp.samples["seconds"])
    cpu = Stats.of(imp.samples["cpu_seconds"])
    loaded = any(imp.samples["mlflow_loaded"])
    ok = secs.median < TARGET_IMPORT_S and not loaded
    how = "mlflow imported" if loaded else (
        f"{secs.median / TARGET_IMPORT_S * 100:.0f}% of the budget" if ok else
        f"over by {(secs.median / TARGET_IMPORT_S - 1) * 100:.0f}%")
    out.append(Row("target", "import formula_foundry.tracking", f"{fmt_num(secs.median * 1000)} ms",
                   "", "", f"target < {TARGET_IMPORT_S * 1000:.0f} ms, no mlflow: " + _verdict(ok, how)
                   + f"; CPU {fmt_num(cpu.median * 1000)} ms",
                   samples={"seconds": [secs.median], "cpu_seconds": [cpu.median]}))
    return out


# --------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    child = sub.add_parser("child", help="internal: one measurement in a fresh interpreter")
    child.add_argument("what", choices=["ff", "mlflow", "wandb"])
    child.add_argument("--work", required=True)
    child.add_argument("--repeats", type=int, default=5)
    child.add_argument("--n", type=int, default=FULL["n"])
    child.add_argument("--n-always", type=int, default=FULL["n_always"])
    child.add_argument("--n-mlflow", type=int, default=FULL["n_mlflow"])
    child.add_argument("--n-async", type=int, default=FULL["n_async"])
    child.add_argument("--n-wandb", type=int, default=FULL["n_wandb"])
    child.add_argument("--template")
    standalone = sub.add_parser("run", help="run this benchmark alone and print its rows")
    standalone.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "child":
        emit({"ff": child_ff, "mlflow": child_mlflow, "wandb": child_wandb}[args.what](args))
        return 0
    from common import table

    with tempfile.TemporaryDirectory(prefix="ff-bench-") as tmp:
        print(table(run(quick=bool(getattr(args, "quick", False)), work=Path(tmp))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
