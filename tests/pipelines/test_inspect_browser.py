"""`ssb inspect` on a real run (the session's two-round `ssb run`: curated, trained, evaluated)
in a real browser: the overview, a skip reason's problems, a kept problem's rollouts and shaded
teacher tokens, the student's per-token KL, and a benchmark's base-vs-student page."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.browser_fixture import browser, screenshot  # noqa: F401  (the fixture, by name)
from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture
def inspector(two_round_run):
    run_dir, done = two_round_run
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "inspect", str(run_dir), "--port", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("inspector: http://127.0.0.1:"), line + proc.stderr.read()
        yield line.split(": ", 1)[1].strip().rstrip("/")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_run_in_the_browser_from_the_funnel_to_a_tokens_alternatives(inspector, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 120)
    outcomes = httpx.get(f"{inspector}/problems", params={"format": "json"}, timeout=60).json()["outcomes"]
    reason = next(o for o in sorted(outcomes) if o != "kept")  # 12 problems of a 135M model: some skipped

    browser.get(f"{inspector}/")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "svg[aria-label='curation funnel']")))
    funnel = browser.find_element(By.CSS_SELECTOR, "svg[aria-label='curation funnel']").text
    assert "kept" in funnel and reason.replace("_", " ") in funnel, funnel
    assert browser.find_elements(By.CSS_SELECTOR, "svg[aria-label='training loss by step'] polyline")
    screenshot(browser, tmp_path, "overview")

    # The problem list, filtered to one skip reason with the page's own form.
    browser.get(f"{inspector}/problems")
    Select(browser.find_element(By.NAME, "outcome")).select_by_value(reason)
    browser.find_element(By.CSS_SELECTOR, "form.filter button[type=submit]").click()
    wait.until(ec.url_contains(f"outcome={reason}"))
    rows = browser.find_elements(By.CSS_SELECTOR, "table tr td:nth-child(2)")
    assert len(rows) == outcomes[reason] and all(reason.replace("_", " ") in r.text for r in rows)
    screenshot(browser, tmp_path, "skipped")

    # A kept problem: its rollouts' verdicts in words, the pair marked, the teacher's tokens shaded.
    Select(browser.find_element(By.NAME, "outcome")).select_by_value("kept")
    browser.find_element(By.CSS_SELECTOR, "form.filter button[type=submit]").click()
    wait.until(ec.url_contains("outcome=kept"))
    browser.find_element(By.CSS_SELECTOR, "td.id a").click()
    wait.until(ec.presence_of_element_located((By.ID, "tokens")))
    verdicts = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "td.right, td.wrong")]
    assert any("✓" in v for v in verdicts) and any("✗" in v for v in verdicts), verdicts
    assert "shown to the teacher as right" in browser.page_source
    assert "shown to the teacher as wrong" in browser.page_source
    tokens = browser.find_elements(By.CSS_SELECTOR, "#tokens span[title]")
    assert tokens and all("background" in t.get_attribute("style") for t in tokens)
    tokens[0].click()
    assert browser.find_element(By.ID, "alternatives").text == tokens[0].get_attribute("title")
    screenshot(browser, tmp_path, "problem")

    # The trained student's per-token KL to the teacher, computed on demand.
    browser.find_element(By.PARTIAL_LINK_TEXT, "per-token KL").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#tokens span[title]")))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#tokens span[title]")) == len(tokens)
    screenshot(browser, tmp_path, "kl")

    # A benchmark: each problem's base and student answers, filterable to what the student lost.
    browser.get(f"{inspector}/")
    browser.find_element(By.CSS_SELECTOR, "nav.pages a").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "h1")))
    assert "synthetic-heldout" in browser.find_element(By.TAG_NAME, "h1").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "td.id")) == 6  # eval.limit of the run
    browser.find_element(By.PARTIAL_LINK_TEXT, "base right").click()
    wait.until(ec.url_contains("filter=base_right_student_wrong"))
    screenshot(browser, tmp_path, "eval")
