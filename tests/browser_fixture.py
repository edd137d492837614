"""A real browser for tests: headless Debian chromium driven by Selenium.

    from tests.browser_fixture import browser, screenshot  # noqa: F401  (the fixture, by name)

    def test_page(browser, tmp_path):
        browser.get(url)
        screenshot(browser, tmp_path, "page")

The system's browser and driver (scripts/setup.sh installs them), never Selenium Manager's
downloads: this machine has no outside network. Without /usr/bin/chromium or
/usr/bin/chromedriver the test is skipped, saying which is missing.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

# No sandbox (root in a container), no GPU, /tmp instead of a small /dev/shm, and none of the
# browser's own traffic (updates, sync, field trials): offline it would retry refused
# connections all the time.
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,900"]


def chromium_driver(profile: Path) -> Any:
    """A headless chromium with a fresh profile in `profile`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture
def browser() -> Iterator[Any]:
    """A fresh browser per test: no cookie or cache carries over from another test."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found: install Debian's chromium and chromium-driver "
                    "(scripts/setup.sh does as root)")
    pytest.importorskip("selenium", reason="selenium is in the test extra: pip install -e '.[test]'")
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    driver = chromium_driver(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    """The page as a PNG under the test's tmp dir (kept by pytest for the last few runs)."""
    path = Path(tmp_path) / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot saved to {path}"
    return path
