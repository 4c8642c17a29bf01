"""Headless Chromium for the explorer's tests: Debian's chromium and chromium-driver, driven by selenium.

Selenium is given /usr/bin/chromedriver and /usr/bin/chromium explicitly, so it never looks for or
downloads a browser. `make test` installs both (scripts/ensure_chromium.sh); where they cannot be
installed, ``missing()`` says why and the tests skip with that sentence.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# As this machine kind's probe starts it: no sandbox (root), no GPU, no background traffic to the network.
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--force-device-scale-factor=1"]


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} not found: install Debian's {package} (make test runs scripts/ensure_chromium.sh)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@contextlib.contextmanager
def chromium(downloads: Path | None = None, width: int = 1400, height: int = 1600) -> Iterator[Any]:
    """A headless Chromium session (a fresh profile each time), quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(tempfile.mkdtemp(prefix="sweepcat-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    if downloads is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                                  "download.prompt_for_download": False,
                                                  "safebrowsing.enabled": False})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        if downloads is not None:  # headless Chromium saves downloads only when told where
            driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def page_state(driver: Any) -> tuple[str, int]:
    """The explorer's <body data-state> and data-seq (the number of its last finished update)."""
    state, seq = driver.execute_script("return [document.body.dataset.state, document.body.dataset.seq];")
    return state, int(seq or 0)


def wait_update(driver: Any, after: int, timeout: float = 30, states: tuple[str, ...] = ("ready",)) -> str:
    """Wait until an update numbered above ``after`` has finished in one of ``states``; its state."""
    from selenium.webdriver.support.ui import WebDriverWait

    def done(d: Any) -> str | bool:
        state, seq = page_state(d)
        return state if seq > after and state in states else False

    return WebDriverWait(driver, timeout).until(done, f"no explorer update after #{after} ended in {states}: "
                                                       f"{page_state(driver)}")
