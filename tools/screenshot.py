#!/usr/bin/env python3
"""Regenerate the MLflow UI screenshots in docs/img/ with one command.

    .venv/bin/python tools/screenshot.py            # needs the dev extra (playwright) and /usr/bin/chromium
    .venv/bin/python tools/screenshot.py --keep     # keep the temporary project to poke at afterwards

What it does:

1. copies ``config/`` into a temporary project and runs ``tools/demo.py --project`` there
   (the demo pipeline, then ``ff-ingest`` into that project's ``data/mlflow/mlruns.db``);
2. starts ``mlflow server`` on a free 127.0.0.1 port and waits for ``/health``;
3. opens the pages in headless Chromium (Debian's ``/usr/bin/chromium`` through Playwright,
   no browser download) and captures, after the React UI has rendered the run names:

   - ``docs/img/mlflow-runs.png``: the ``ff-m3-pipeline`` runs list, the pipeline run expanded
     to show its nested coupon-generation and simulation runs;
   - ``docs/img/mlflow-compare.png``: the three simulation runs' ``insertion_loss_db`` over the
     400-point frequency sweep, overlaid (the runs page's chart view);
   - ``docs/img/mlflow-run.png``: the pipeline run's overview (metrics, params, child runs, tags);
   - ``docs/img/mlflow-metrics.png``: one simulation run's own charts (insertion and return loss);
   - ``docs/img/mlflow-artifacts.png``: a simulation run's Artifacts tab showing its S-parameter plot;

4. stops the server (its whole process group) and removes the temporary project.

``tests/e2e/test_browser.py`` reuses :class:`MlflowServer` and :func:`launch_chromium` from here.
Environment: ``FF_CHROMIUM`` overrides the browser path.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("FF_CHROMIUM", "/usr/bin/chromium")
# Playwright adds --headless itself; a closed network needs no update, sync or QUIC probes.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# MLflow 3 opens experiments in its GenAI view by default; this query selects the runs view.
ML_VIEW = "workflowType=machine_learning"
_ENV_OVERRIDES = ("FF_CONFIG", "MLFLOW_TRACKING_URI", "FF_ARTIFACT_ROOT", "FF_JOURNAL_ROOT", "FF_TRACKING_ENABLED")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 in its own process group; a context manager.

    Start-up takes 10-20 s (more on a busy machine): :meth:`start` polls ``/health``.
    GenAI job execution is switched off (Formula Foundry does not use it, and its
    consumer processes would otherwise outlive a signal to the server's pid alone);
    :meth:`stop` signals the whole group, then kills what is left.
    """

    def __init__(self, backend_store_uri: str, *, port: int | None = None, log_path: Path | None = None,
                 python: str = sys.executable) -> None:
        self.backend_store_uri = backend_store_uri
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="mlflow-server-", suffix=".log")[1])
        self.python = python
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> MlflowServer:
        env = {k: v for k, v in os.environ.items() if k not in _ENV_OVERRIDES}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        cmd = [self.python, "-m", "mlflow", "server", "--backend-store-uri", self.backend_store_uri,
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode} before it was up:\n"
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"mlflow server did not answer {self.url}/health within {timeout:.0f} s:\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)  # start_new_session: the group id is the server's pid
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        # Workers that outlived the leader still carry its group id.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def __enter__(self):  # -> MlflowServer (typing.Self needs Python 3.11)
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def launch_chromium(playwright, user_data_dir: Path | str, *, width: int = 1440, height: int = 900):
    """A headless Chromium context with a fresh profile in ``user_data_dir`` (Playwright, no download)."""
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": width, "height": height}, device_scale_factor=1, locale="en-US",
        timezone_id="UTC")


def make_demo_project(folder: Path, *, seed: int = 42) -> Path:
    """A project in ``folder`` (config copied from this tree) holding the ingested demo; returns the db path."""
    (folder / "config").mkdir(parents=True, exist_ok=True)
    for name in ("mlflow.yaml", "acceptance_criteria_registry.csv"):
        if (ROOT / "config" / name).is_file():
            shutil.copy(ROOT / "config" / name, folder / "config" / name)
    env = {k: v for k, v in os.environ.items() if k not in _ENV_OVERRIDES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--project", str(folder), "--seed", str(seed)],
                   check=True, env=env, cwd=folder, stdout=subprocess.DEVNULL)
    return folder / "data" / "mlflow" / "mlruns.db"


def demo_run_ids(db: Path) -> tuple[str, dict[str, str]]:
    """(experiment id, run name -> MLflow run id) of the newest demo pipeline in the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("ff-m3-pipeline")
    parent = client.search_runs([exp.experiment_id], "attributes.run_name = 'm3-pipeline-demo'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    ids = {run.info.run_name: run.info.run_id for run in children}
    ids[parent.info.run_name] = parent.info.run_id
    return exp.experiment_id, ids


def close_assistant(page) -> None:
    """Close MLflow 3's assistant side panel if it is open (it takes a third of the width)."""
    with contextlib.suppress(Exception):
        page.get_by_role("button", name="Close", exact=True).first.click(timeout=3000)
        page.get_by_text("MLflow Assistant").first.wait_for(state="hidden", timeout=3000)


def _expand_run(page, run_id: str, child_name: str) -> None:
    """Show a parent run's nested runs (the UI remembers expanded rows, so only click when collapsed)."""
    # ag-grid splits a row into pinned and scrolling parts: take the cell with the run name.
    cell = page.locator(f"[role=row][row-id='{run_id}'] [col-id='attributes.`Run Name`']").first
    cell.wait_for()
    child = page.get_by_text(child_name, exact=True).first
    if not child.is_visible():
        cell.locator("button").first.click()
    child.wait_for()


def open_artifact(page, folder: str, name: str):
    """In a run's Artifacts tab, open ``folder`` and select ``name``; returns its preview image."""
    page.get_by_text(folder, exact=True).first.click()
    page.get_by_text(name, exact=True).first.click()
    page.get_by_text(f"{folder}/{name}").first.wait_for()
    image = page.locator("img[src^='blob:']").first
    image.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    return image


def capture(base_url: str, experiment_id: str, ids: dict[str, str], out: Path, profile: Path) -> list[Path]:
    """Take the five screenshots; every step waits for content (run names, chart titles) first."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    parent = ids["m3-pipeline-demo"]
    sim = ids.get("simulate-via-d030") or next(v for k, v in ids.items() if k.startswith("simulate-"))
    runs_url = f"{base_url}/#/experiments/{experiment_id}/runs?{ML_VIEW}"
    shots: list[Path] = []

    def shot(page, name: str) -> None:
        page.mouse.move(0, 0)  # no hover tooltips
        time.sleep(1.5)  # charts animate in
        shots.append(out / name)
        page.screenshot(path=shots[-1])

    with sync_playwright() as p:
        ctx = launch_chromium(p, profile)
        try:
            page = ctx.new_page()
            page.set_default_timeout(60_000)

            # 1. The runs list, the pipeline run expanded to show its nested runs.
            page.set_viewport_size({"width": 1440, "height": 560})
            page.goto(runs_url)
            page.get_by_text("m3-pipeline-demo").first.wait_for()
            close_assistant(page)
            _expand_run(page, parent, "simulate-via-d020")
            shot(page, "mlflow-runs.png")

            # 2. The simulation runs' insertion loss, overlaid (chart view of the runs page).
            page.set_viewport_size({"width": 1440, "height": 820})
            page.goto(runs_url)
            search = page.get_by_placeholder('metrics.rmse < 1 and params.model = "tree"')
            search.fill("attributes.run_name LIKE 'simulate%'")
            search.press("Enter")
            page.get_by_text("4 matching runs").first.wait_for()
            _expand_run(page, parent, "simulate-via-d030")
            page.locator("label:has(input[value=CHART])").click()
            page.get_by_placeholder("Search metric charts").fill("insertion_loss_db")
            page.locator("[data-component-id=fullscreen_button_chartcard]").first.click()
            page.get_by_text("simulate-via-d020 (insertion_loss_db)").first.wait_for()
            shot(page, "mlflow-compare.png")

            # 3. The pipeline run's overview: description, metrics, params, child runs, tags.
            page.set_viewport_size({"width": 1440, "height": 1020})
            page.goto(f"{base_url}/#/experiments/{experiment_id}/runs/{parent}?{ML_VIEW}")
            page.get_by_text("Child runs").first.wait_for()
            page.get_by_text("simulate-via-d020").first.wait_for()
            page.get_by_text("pipeline_version").first.wait_for()
            close_assistant(page)
            shot(page, "mlflow-run.png")

            # 4. One simulation run's own charts, filtered to the S-parameter sweep.
            page.set_viewport_size({"width": 1440, "height": 640})
            page.goto(f"{base_url}/#/experiments/{experiment_id}/runs/{sim}/model-metrics?{ML_VIEW}")
            page.get_by_text("log10_residual").first.wait_for()  # charts below the fold render lazily
            close_assistant(page)
            page.get_by_placeholder("Search metric charts").fill("loss_db")
            page.get_by_text("simulate-via-d030 (insertion_loss_db)").first.wait_for()
            page.get_by_text("simulate-via-d030 (return_loss_db)").first.wait_for()
            shot(page, "mlflow-metrics.png")

            # 5. The Artifacts tab: the S-parameter plot logged with run.log_figure.
            page.set_viewport_size({"width": 1440, "height": 760})
            page.goto(f"{base_url}/#/experiments/{experiment_id}/runs/{sim}/artifacts?{ML_VIEW}")
            close_assistant(page)
            open_artifact(page, "plots", "via-d030-sparams.png")
            shot(page, "mlflow-artifacts.png")
        except Exception:
            with contextlib.suppress(Exception):
                page.screenshot(path=profile.parent / "failure.png")
                print(f"capture failed at {page.url}; page saved as {profile.parent / 'failure.png'}",
                      file=sys.stderr)
            raise
        finally:
            ctx.close()
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/screenshot.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="folder for the PNGs (docs/img)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project and print where it is")
    parser.add_argument("--port", type=int, default=None, help="server port (default: a free one)")
    args = parser.parse_args(argv)

    if not Path(CHROMIUM).exists():
        print(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set FF_CHROMIUM)", file=sys.stderr)
        return 2
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("playwright is missing: pip install -e '.[dev]' (never `playwright install`)", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="ff-screenshot-"))
    try:
        t0 = time.perf_counter()
        db = make_demo_project(tmp / "project")
        experiment_id, ids = demo_run_ids(db)
        print(f"demo ingested into {db} ({time.perf_counter() - t0:.1f} s)")
        with MlflowServer(f"sqlite:///{db}", port=args.port, log_path=tmp / "server.log") as server:
            print(f"mlflow server up at {server.url} ({time.perf_counter() - t0:.1f} s)")
            shots = capture(server.url, experiment_id, ids, args.out, tmp / "chromium-profile")
        for shot in shots:
            print(f"wrote {shot.relative_to(ROOT) if shot.is_relative_to(ROOT) else shot} "
                  f"({shot.stat().st_size // 1024} KB)")
        print(f"done in {time.perf_counter() - t0:.1f} s")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
