"""End to end in a real browser: demo -> ff-ingest -> ``mlflow server`` -> headless Chromium.

The demo runs into a throw-away project (its store a copy of the session's migrated
template), ``mlflow server`` serves that store on a free 127.0.0.1 port (its whole
process group is stopped afterwards, whatever happens), and Playwright drives Debian's
``/usr/bin/chromium`` (never a downloaded browser) through the pages a user opens.

Skipped, with the reason, when Chromium or the playwright package is missing; set
``FF_REQUIRE_BROWSER=1`` (CI) to make that a failure instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

_spec = importlib.util.spec_from_file_location("ff_tools_screenshot", REPO / "tools" / "screenshot.py")
screenshot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(screenshot)

CHILD_NAMES = [f"{kind}-via-d0{d}" for d in ("20", "25", "30") for kind in ("coupongen", "simulate")]
TIMEOUT_MS = 60_000  # a cold React bundle on a busy 2-core machine


def _missing(reason: str):
    if os.environ.get("FF_REQUIRE_BROWSER") == "1":
        pytest.fail(f"FF_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def sync_playwright():
    if not Path(screenshot.CHROMIUM).exists():
        _missing(f"no Chromium at {screenshot.CHROMIUM} (Debian: apt-get install chromium; "
                 "FF_CHROMIUM=/path overrides)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install -e '.[dev]'; no `playwright install` "
                 "needed: the test uses the system Chromium)")
    pytest.importorskip("mlflow")
    return sync_playwright


@pytest.fixture(scope="module")
def served_demo(sync_playwright, tmp_path_factory, template_store):
    """(server url, experiment id, {run name: MLflow run id}) of an ingested demo behind mlflow server."""
    project = tmp_path_factory.mktemp("browser") / "proj"
    (project / "config").mkdir(parents=True)
    shutil.copy(REPO / "config" / "mlflow.yaml", project / "config" / "mlflow.yaml")
    db = project / "data" / "mlflow" / "mlruns.db"
    db.parent.mkdir(parents=True)
    shutil.copy(template_store, db)
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--project", str(project)],
                          check=False, capture_output=True, text=True, env=subprocess_env(), timeout=180)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    experiment_id, ids = screenshot.demo_run_ids(db)
    server = screenshot.MlflowServer(f"sqlite:///{db}", log_path=project / "server.log")
    try:
        server.start(timeout=120)
        yield server.url, experiment_id, ids
    finally:
        server.stop()


@pytest.fixture
def page(sync_playwright, served_demo, tmp_path):
    with sync_playwright() as p:
        context = screenshot.launch_chromium(p, tmp_path / "chromium-profile", height=1100)
        try:
            pg = context.new_page()
            pg.set_default_timeout(TIMEOUT_MS)
            yield pg
        finally:
            context.close()


def test_run_page_shows_name_param_metric_and_nested_children(served_demo, page):
    from playwright.sync_api import expect

    url, experiment_id, ids = served_demo
    page.goto(f"{url}/#/experiments/{experiment_id}/runs/{ids['m3-pipeline-demo']}?{screenshot.ML_VIEW}")
    expect(page.get_by_role("heading", name="m3-pipeline-demo")).to_be_visible(timeout=TIMEOUT_MS)
    # A param and its value, a metric, a convention tag.
    expect(page.get_by_text("pipeline_version", exact=True)).to_be_visible()
    expect(page.get_by_text("oshpark_4layer", exact=True)).to_be_visible()
    expect(page.get_by_text("best_il_at_band_edge_db", exact=True)).to_be_visible()
    expect(page.get_by_text("-0.82276", exact=True)).to_be_visible()
    expect(page.get_by_text("M3-pipeline-demo").first).to_be_visible()
    # The nested runs, listed as the parent's children.
    expect(page.get_by_text("Child runs", exact=True)).to_be_visible()
    for name in CHILD_NAMES:
        expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
    # A child links back to its run page, which names its parent.
    page.get_by_role("link", name="simulate-via-d020", exact=True).click()
    expect(page.get_by_role("heading", name="simulate-via-d020")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_role("link", name="m3-pipeline-demo")).to_be_visible(timeout=TIMEOUT_MS)


def test_runs_list_nests_children_and_run_draws_metric_plots(served_demo, page):
    from playwright.sync_api import expect

    url, experiment_id, ids = served_demo
    page.goto(f"{url}/#/experiments/{experiment_id}/runs?{screenshot.ML_VIEW}")
    # ag-grid splits a row into pinned and scrolling parts: take the part with the run name.
    name_cell = page.locator(f"[role=row][row-id='{ids['m3-pipeline-demo']}'] [col-id='attributes.`Run Name`']")
    expect(name_cell).to_contain_text("m3-pipeline-demo", timeout=TIMEOUT_MS)
    expect(page.get_by_text("7 matching runs")).to_be_visible()
    # Children are folded under the parent until it is expanded.
    expect(page.get_by_role("link", name="coupongen-via-d030", exact=True)).to_have_count(0)
    name_cell.locator("button").first.click()
    for name in CHILD_NAMES:
        expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()

    # A simulation run draws its 400-step sweep as a line chart.
    page.goto(f"{url}/#/experiments/{experiment_id}/runs/{ids['simulate-via-d030']}/model-metrics"
              f"?{screenshot.ML_VIEW}")
    page.get_by_placeholder("Search metric charts").fill("insertion_loss_db")
    expect(page.get_by_text("simulate-via-d030 (insertion_loss_db)")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator(".js-plotly-plot path.js-line").first).to_be_attached()


def test_artifacts_tab_renders_the_logged_figure(served_demo, page):
    """A simulation run's Artifacts tab lists the files logged with log_figure / log_table / log_text,
    and selecting the S-parameter plot renders it as an image (decoded, 700 px wide: the figure's size)."""
    from playwright.sync_api import expect

    url, experiment_id, ids = served_demo
    page.goto(f"{url}/#/experiments/{experiment_id}/runs/{ids['simulate-via-d030']}/artifacts?{screenshot.ML_VIEW}")
    for folder in ("plots", "tables", "logs", "artifact_refs"):
        expect(page.get_by_text(folder, exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
    image = screenshot.open_artifact(page, "plots", "via-d030-sparams.png")
    assert image.evaluate("img => img.naturalWidth") == 700
    # The solver log logged with log_text previews as text.
    page.get_by_text("logs", exact=True).first.click()
    page.get_by_text("via-d030-solver.log", exact=True).first.click()
    expect(page.get_by_text("converged: S21 at band edge").first).to_be_visible(timeout=TIMEOUT_MS)


def test_system_metrics_tab_draws_the_sampled_metrics(served_demo, page):
    """The demo's pipeline run samples system metrics (start_run(log_system_metrics=True)); MLflow's
    System metrics tab draws them as charts under MLflow's own names."""
    from playwright.sync_api import expect

    url, experiment_id, ids = served_demo
    page.goto(f"{url}/#/experiments/{experiment_id}/runs/{ids['m3-pipeline-demo']}/system-metrics"
              f"?{screenshot.ML_VIEW}")
    for name in ("cpu_utilization_percentage", "system_memory_usage_megabytes"):
        expect(page.get_by_text(f"m3-pipeline-demo (system/{name})").first).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator(".js-plotly-plot path.js-line").first).to_be_attached(timeout=TIMEOUT_MS)
