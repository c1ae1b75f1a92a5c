"""A real browser: JupyterLab on loopback, the getting-started notebook run in headless Chromium
(Debian's chromium driven by Playwright), and the protected table with its marking on screen."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def jupyterlab(tmp_path, sample_dir, store_url):
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed here (.ci/run installs it for CI)")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / "getting_started.ipynb", work)
    settings = tmp_path / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "safestats-browser-test"
    env = {
        **os.environ,
        "SAFESTATS_DATA_DIR": str(sample_dir),
        "SAFESTATS_STORE_URL": store_url,
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "user-settings"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
    }
    jupyter = Path(sys.executable).parent / "jupyter"
    proc = subprocess.Popen(
        [
            str(jupyter),
            "lab",
            "--no-browser",
            f"--port={port}",
            "--ip=127.0.0.1",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={work}",
            "--allow-root",
            "--ServerApp.open_browser=False",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/api/status?token={token}", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("JupyterLab did not start")
    yield url, token, work
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _run_all(p, tmp_path, url: str, token: str, notebook: str):
    """Open ``notebook`` in JupyterLab in Chromium and run all its cells: (browser, page)."""
    browser = p.chromium.launch_persistent_context(
        str(tmp_path / "chrome"), executable_path=CHROMIUM, args=ARGS, viewport={"width": 1400, "height": 1000}
    )
    page = browser.new_page()
    page.goto(f"{url}/lab/tree/{notebook}?reset&token={token}", timeout=120_000)
    page.wait_for_selector(".jp-Notebook", timeout=120_000)
    try:  # a fresh JupyterLab asks which kernel to start
        page.click(".jp-Dialog button:has-text('Select')", timeout=20_000)
    except Exception:  # noqa: BLE001 - no dialog: the kernel started by itself
        pass
    page.click("div.lm-MenuBar-itemLabel:text-is('Run')", timeout=30_000)
    page.click("li.lm-Menu-item:has-text('Run All Cells')", timeout=30_000)
    return browser, page


@pytest.mark.slow
def test_getting_started_runs_in_jupyterlab_with_its_marking_on_screen(jupyterlab, tmp_path):
    from playwright.sync_api import sync_playwright

    url, token, work = jupyterlab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser, page = _run_all(p, tmp_path, url, token, "getting_started.ipynb")
        try:
            banner = page.wait_for_selector(
                ".safestats-marking", timeout=int(os.environ.get("SAFESTATS_BROWSER_WAIT", "180000"))
            )
        finally:
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-getting-started.png"))
        assert "OFFICIAL" in banner.inner_text()
        page.wait_for_selector(".safestats-provenance", timeout=60_000)
        banner.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-getting-started.png"))
        table = page.query_selector(".safestats-result table")
        assert table is not None and "la_code" in table.inner_text()
        browser.close()


BROWSER_CHECKS = [
    "import safestats as ss\nfrom safestats import plots\n"
    "s = ss.connect(user='demo.unrestricted')\n"
    "s.table('Nationality').where(term='2017-spring').group_by('proficiency_in_english').count().run()",
    "t = s.table('PupilOnRoll').where(term='2017-spring').group_by('phase', 'sex').count().run()\n"
    "t.pivot(index='phase', columns='sex')",
    "fig = plots.bar(t, x='phase', y='count', hue='sex', title='Pupils by phase and sex')",
    # last: Run All stops at an error
    "ss.connect(user='demo.analyst').table('Nationality').where(term='2017-spring')"
    ".group_by('nationality').count().run()",
]


def _notebook(cells: list[str]) -> dict:
    return {
        "cells": [
            {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": c} for c in cells
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


@pytest.mark.slow
def test_a_sensitive_result_a_refusal_a_pivot_and_a_chart_on_screen(jupyterlab, tmp_path, sample_dir, store_url):
    """In JupyterLab: an OFFICIAL-SENSITIVE result with its red banner, a marked pivot, a chart,
    and a refused query as one error block (no traceback); then the published transparency
    report of that traffic; a screenshot of each."""
    import datetime as dt

    from playwright.sync_api import sync_playwright

    from safestats.config import Settings
    from safestats.marking import colour
    from safestats.service.pipeline import Service
    from safestats.service.publishing import publish_transparency

    url, token, work = jupyterlab
    (work / "browser_checks.ipynb").write_text(json.dumps(_notebook(BROWSER_CHECKS)))
    notebook_settings = tmp_path / "user-settings" / "@jupyterlab" / "notebook-extension"
    notebook_settings.mkdir(parents=True, exist_ok=True)  # every cell in the DOM, not only those in view
    (notebook_settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    ARTIFACTS.mkdir(exist_ok=True)
    wait = int(os.environ.get("SAFESTATS_BROWSER_WAIT", "180000"))
    with sync_playwright() as p:
        browser, page = _run_all(p, tmp_path, url, token, "browser_checks.ipynb")
        try:
            page.wait_for_selector("text=AccessDenied", timeout=wait)  # the refusal: the last cell
        finally:
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-checks.png"), full_page=True)
        cells = page.query_selector_all(".jp-Cell.jp-CodeCell")
        assert len(cells) == 4
        sensitive = cells[0].query_selector(".safestats-marking")
        assert sensitive is not None and sensitive.inner_text().startswith("OFFICIAL-SENSITIVE")
        background = sensitive.evaluate("e => getComputedStyle(e).backgroundColor")
        red = colour("OFFICIAL-SENSITIVE").lstrip("#")
        assert background == "rgb({}, {}, {})".format(*(int(red[i : i + 2], 16) for i in (0, 2, 4)))
        cells[0].screenshot(path=str(ARTIFACTS / "jupyterlab-sensitive-result.png"))
        pivot = cells[1].query_selector(".safestats-result")
        assert pivot is not None and "derived: pivot of count by phase × sex" in pivot.inner_text()
        assert "OFFICIAL" in cells[1].query_selector(".safestats-marking").inner_text()
        cells[1].screenshot(path=str(ARTIFACTS / "jupyterlab-derived-pivot.png"))
        assert cells[2].query_selector(".jp-OutputArea-output img") is not None
        cells[2].screenshot(path=str(ARTIFACTS / "jupyterlab-chart.png"))
        refusal = cells[3].query_selector(".jp-OutputArea-output").inner_text()
        assert "AccessDenied" in refusal and "Traceback" not in refusal and len(refusal.splitlines()) <= 3
        cells[3].screenshot(path=str(ARTIFACTS / "jupyterlab-refused-query.png"))
        # a published report: this month's transparency report of the traffic above, as published
        folder = publish_transparency(
            Service(Settings.load({}, data_dir=sample_dir, store_url=store_url)),
            now=dt.datetime.now(dt.UTC),
            out_root=tmp_path / "published",
            period=dt.datetime.now(dt.UTC).strftime("%Y-%m"),
        )
        report = browser.new_page()
        report.goto((folder / "transparency.html").as_uri())
        marking = report.query_selector(".marking")
        assert marking is not None and marking.inner_text().startswith("OFFICIAL")
        table = report.inner_text("table")
        assert "records_used" in table and "purposes" in table and "Total" in table
        report.screenshot(path=str(ARTIFACTS / "published-transparency-report.png"), full_page=True)
        browser.close()
