"""Browser sessions (services.ui_auth) on their own: no Ray, no Redis, no server."""

from __future__ import annotations

import pytest

from services.ui_auth import (COOKIE, check_session, cookie_header, login_url, make_session, safe_next, session_key,
                              wants_html)

OWNER = "0123456789abcdef0123456789abcdef"
KEY = session_key(b"s" * 32, "ab" * 16, ["d1", "d2"])
NOW = 1_800_000_000.0


def test_a_session_names_its_owner_until_it_expires():
    value = make_session(OWNER, KEY, NOW, max_age=60)
    assert check_session(value, KEY, NOW) == OWNER
    assert check_session(value, KEY, NOW + 59) == OWNER
    assert check_session(value, KEY, NOW + 60) is None
    assert check_session(value, KEY, NOW + 3600) is None


def test_a_session_is_neither_forged_nor_moved_between_deployments():
    value = make_session(OWNER, KEY, NOW)
    owner, expiry, signature = value.split(".")
    other = "f" * 32
    tampered = [
        f"{other}.{expiry}.{signature}",  # someone else's jobs
        f"{owner}.{int(expiry) + 10**6}.{signature}",  # a longer life
        f"{owner}.{expiry}.{signature[:-1]}{'0' if signature[-1] != '0' else '1'}",
        f"{owner}.{expiry}.{signature.upper()}",
        f"{owner}.{expiry}", f"{owner}.{expiry}.{signature}.x", "", "...", "x" * 300,
        f"{owner}.-5.{signature}", f"{owner}. {expiry}.{signature}",
    ]
    for value_ in tampered:
        assert check_session(value_, KEY, NOW) is None, value_
    assert check_session(None, KEY, NOW) is None
    assert check_session(value, session_key(b"t" * 32, "ab" * 16, ["d1", "d2"]), NOW) is None  # another salt


def test_the_key_follows_the_deployments_tokens():
    salt = b"s" * 32
    assert session_key(salt, "ab" * 16, ["d1", "d2"]) == session_key(salt, "ab" * 16, ["d2", "d1"])
    assert session_key(salt, "ab" * 16, ["d1", "d2"]) != session_key(salt, "ab" * 16, ["d1"])  # a token removed
    assert session_key(salt, "ab" * 16, ["d1"]) != session_key(salt, "cd" * 16, ["d1"])  # tokens re-salted
    assert len(KEY) == 32


def test_a_session_holds_no_token_and_only_hex_owners():
    token = "test-token-5f2a9c1e7d"
    assert token not in make_session(OWNER, KEY, NOW)
    with pytest.raises(ValueError):
        make_session("owner.with.dots", KEY, NOW)


@pytest.mark.parametrize("value, expected", [
    ("/docs", "/docs"), ("/ui/jobs/abc/?x=1&y=2", "/ui/jobs/abc/?x=1&y=2"),
    (None, "/ui/jobs"), ("", "/ui/jobs"), ("//evil.com", "/ui/jobs"), ("//evil.com/x", "/ui/jobs"),
    ("/\\evil.com", "/ui/jobs"), ("https://evil.com", "/ui/jobs"), ("evil.com", "/ui/jobs"),
    ("javascript:alert(1)", "/ui/jobs"), ("/x\r\nSet-Cookie: a=b", "/ui/jobs"), ("/x y", "/ui/jobs"),
    ("/" + "a" * 3000, "/ui/jobs"),
])
def test_only_paths_of_this_app_are_places_to_go_after_login(value, expected):
    assert safe_next(value) == expected


def test_login_links_keep_the_root_and_a_safe_next():
    assert login_url("/apionly") == "/apionly/ui/login"
    assert login_url("", "/docs") == "/ui/login?next=/docs"
    assert login_url("/a", "/ui/jobs?offset=5&limit=2") == "/a/ui/login?next=/ui/jobs%3Foffset%3D5%26limit%3D2"
    assert login_url("/a", "//evil.com") == "/a/ui/login?next=/ui/jobs"


@pytest.mark.parametrize("method, accept, fmt, html", [
    ("GET", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", None, True),  # a browser
    ("GET", "text/html", "json", False), ("GET", "application/json", None, False),
    ("GET", "*/*", None, False), ("GET", None, None, False),  # curl, httpx: 401 JSON
    ("POST", "text/html", None, False),
])
def test_browsers_get_the_login_page_and_scripts_get_401(method, accept, fmt, html):
    assert wants_html(method, accept, fmt) is html


def test_the_cookie_is_http_only_same_site_strict_and_secure_over_https():
    plain = cookie_header("v", path="/apionly", secure=False)
    assert plain.startswith(f"{COOKIE}=v;") and "HttpOnly" in plain and "SameSite=Strict" in plain
    assert "Path=/apionly" in plain and "Max-Age=43200" in plain and "Secure" not in plain
    assert cookie_header("v", path="/", secure=True).endswith("; Secure")
    assert "Max-Age=0" in cookie_header("", path="/", secure=False, max_age=0)
