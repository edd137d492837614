"""/docs in a real browser (headless chromium): sent to the login form, logged in with the
token, back on Swagger UI, whose operations render only if its JavaScript (served by the API,
no CDN) ran and fetched /openapi.json with the session cookie."""

from __future__ import annotations

import pytest

from tests.browser_fixture import browser, screenshot  # noqa: F401  (the fixture, by name)
from tests.services.conftest import TOKEN

pytestmark = pytest.mark.slow


def test_docs_in_a_browser_log_in_then_swagger_ui_renders_the_operations(api_only, browser, tmp_path):  # noqa: F811
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(f"{api_only.url}/docs")
    wait.until(ec.presence_of_element_located((By.NAME, "token")))
    assert browser.current_url.startswith(f"{api_only.url}/ui/login?next=/docs"), browser.current_url
    screenshot(browser, tmp_path, "login")

    browser.find_element(By.NAME, "token").send_keys("not-the-token-but-long-enough")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "p.error")))
    assert not browser.get_cookies()

    browser.find_element(By.NAME, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(ec.url_to_be(f"{api_only.url}/docs"))
    try:
        operations = wait.until(ec.presence_of_all_elements_located((By.CSS_SELECTOR, ".opblock")))
    except TimeoutException:
        screenshot(browser, tmp_path, "docs-timeout")
        raise AssertionError(f"no operation rendered; console: {browser.get_log('browser')}; "
                             f"page: {browser.find_element(By.ID, 'swagger-ui').text[:2000]}") from None
    wait.until(lambda d: "/v1/curation-jobs" in d.find_element(By.ID, "swagger-ui").text)
    assert len(operations) >= 7, len(operations)
    path = screenshot(browser, tmp_path, "docs")
    assert path.stat().st_size > 10_000

    cookies = browser.get_cookies()
    assert [c["name"] for c in cookies] == ["ssb_session"] and cookies[0]["httpOnly"]
    assert cookies[0]["sameSite"] == "Strict" and TOKEN not in cookies[0]["value"]
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: no script reads it
    # Everything the page loaded came from the API itself.
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(f"{api_only.url}/") for url in loaded), loaded
    assert f"{api_only.url}/openapi.json" in loaded

    browser.get(f"{api_only.url}/ui/jobs")
    wait.until(ec.presence_of_element_located((By.TAG_NAME, "h1")))
    assert "Curation jobs" in browser.page_source
    screenshot(browser, tmp_path, "jobs")
    browser.find_element(By.CSS_SELECTOR, "header form button").click()  # log out
    wait.until(ec.presence_of_element_located((By.NAME, "token")))
    browser.get(f"{api_only.url}/docs")
    wait.until(ec.presence_of_element_located((By.NAME, "token")))  # the login form again
