"""The quickstart run (once per session) and a headless Chromium driven through WebDriver.

Chromium and its driver come from the distribution (``apt-get install chromium chromium-driver``). A
developer machine without them skips the browser tests with one line; CI sets
``SD_TRAIN_REQUIRE_BROWSER=1`` (``.ci/run``), which turns that skip into a failure.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--force-device-scale-factor=1")
WINDOW = (1280, 900)
QUICKSTART_STEPS = 8


def _browser_binaries() -> tuple[str | None, str | None]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    return chromium, shutil.which("chromedriver")


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory, worker_id):
    """``(output folder, stdout, stderr)`` of ``scripts/quickstart.py --steps 8`` run in-process, once for all
    pytest-xdist workers (the first one runs it under a file lock, the others read what it left)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (base if worker_id == "master" else base.parent) / "quickstart"  # the parent is this session's
    with FileLock(f"{root}.lock"):
        if not (root / "stderr.txt").is_file():
            spec = importlib.util.spec_from_file_location("quickstart", ROOT / "scripts" / "quickstart.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            stdout, stderr = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = module.main(["--output_dir", str(root / "out"), "--steps", str(QUICKSTART_STEPS)])
            assert code == 0, stderr.getvalue()
            (root / "stdout.txt").write_text(stdout.getvalue(), encoding="utf-8")
            (root / "stderr.txt").write_text(stderr.getvalue(), encoding="utf-8")
    return root / "out", (root / "stdout.txt").read_text(encoding="utf-8"), (root / "stderr.txt").read_text(
        encoding="utf-8")


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium WebDriver session (fresh profile, no network), closed afterwards."""
    chromium, driver_path = _browser_binaries()
    if not (chromium and driver_path):
        message = "headless Chromium not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("SD_TRAIN_REQUIRE_BROWSER") == "1":
            pytest.fail(message + "; SD_TRAIN_REQUIRE_BROWSER=1 forbids skipping")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        driver.set_network_conditions(offline=True, latency=0, download_throughput=0, upload_throughput=0)
        yield driver
    finally:
        driver.quit()
