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


@pytest.mark.slow
def test_getting_started_runs_in_jupyterlab_with_its_marking_on_screen(jupyterlab, tmp_path):
    from playwright.sync_api import sync_playwright

    url, token, work = jupyterlab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "chrome"), executable_path=CHROMIUM, args=ARGS, viewport={"width": 1400, "height": 1000}
        )
        page = browser.new_page()
        page.goto(f"{url}/lab/tree/getting_started.ipynb?reset&token={token}", timeout=120_000)
        page.wait_for_selector(".jp-Notebook", timeout=120_000)
        try:  # a fresh JupyterLab asks which kernel to start
            page.click(".jp-Dialog button:has-text('Select')", timeout=20_000)
        except Exception:  # noqa: BLE001 - no dialog: the kernel started by itself
            pass
        page.click("div.lm-MenuBar-itemLabel:text-is('Run')", timeout=30_000)
        page.click("li.lm-Menu-item:has-text('Run All Cells')", timeout=30_000)
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
