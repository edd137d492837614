"""Browser sessions of the curation API: a signed cookie instead of the bearer token.

A session is `owner_id.expiry.signature`: the owner id a token maps to (never the token, so a
leaked cookie or log line reveals no credential and expires on its own), the unix second it
expires, and an HMAC-SHA256 of both under a key only the deployment knows. Sessions are not
stored anywhere: a replica checks one with the key alone.

Pure functions (no Ray, no Redis, no web framework), so they are tested on their own.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from urllib.parse import quote

COOKIE = "ssb_session"
MAX_AGE_S = 12 * 3600
DEFAULT_NEXT = "/ui/jobs"

_OWNER = re.compile(r"^[0-9a-f]{1,64}$")
_EXPIRY = re.compile(r"^[0-9]{1,12}$")


def session_key(salt: bytes, token_salt: str = "", token_digests: list[str] | tuple[str, ...] = ()) -> bytes:
    """The signing key: from the deployment salt kept in Redis (replicas share it), bound to the
    deployment's token set, so that removing or rotating tokens also ends the sessions made with
    the old ones (a session names an owner, not a token, and could not be revoked otherwise)."""
    binding = "\0".join([token_salt, *sorted(token_digests)]).encode()
    return hmac.new(salt, b"ui-session\0" + binding, hashlib.sha256).digest()


def _sign(payload: str, key: bytes) -> str:
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def make_session(owner: str, key: bytes, now: float, max_age: int = MAX_AGE_S) -> str:
    if not _OWNER.match(owner):
        raise ValueError("an owner id is lowercase hex")
    payload = f"{owner}.{int(now) + int(max_age)}"
    return f"{payload}.{_sign(payload, key)}"


def check_session(value: str | None, key: bytes, now: float) -> str | None:
    """The owner a session names, or None: malformed, signed with another key, or expired."""
    if not value or len(value) > 256:
        return None
    parts = value.split(".")
    if len(parts) != 3:
        return None
    owner, expiry, signature = parts
    if not _OWNER.match(owner) or not _EXPIRY.match(expiry):
        return None
    if not hmac.compare_digest(signature.encode(), _sign(f"{owner}.{expiry}", key).encode()):
        return None
    return owner if int(expiry) > now else None


def safe_next(value: str | None, default: str = DEFAULT_NEXT) -> str:
    """A path inside this app to go to after logging in, or `default`. Only "/..." paths: no
    scheme, no "//host" and no backslash (browsers read "/\\host" as "//host"), so a crafted
    login link cannot send anyone to another site."""
    if not value or len(value) > 2000 or not value.startswith("/") or value.startswith("//"):
        return default
    if "\\" in value or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return default
    return value


def login_url(root: str, next_path: str | None = None) -> str:
    url = f"{root}/ui/login"
    if next_path:
        url += "?next=" + quote(safe_next(next_path), safe="/")
    return url


def wants_html(method: str, accept: str | None, query_format: str | None) -> bool:
    """Whether a refusal should be the login page (a browser navigating) or 401 JSON (a script,
    Swagger UI's fetch of the schema, `?format=json`)."""
    accept = (accept or "").lower()
    if query_format == "json" or "application/json" in accept:
        return False
    return method == "GET" and "text/html" in accept


def cookie_header(value: str, *, path: str, secure: bool, max_age: int = MAX_AGE_S) -> str:
    """A Set-Cookie value: not readable by scripts, never sent by another site's requests."""
    attrs = [f"{COOKIE}={value}", f"Max-Age={int(max_age)}", f"Path={path or '/'}", "HttpOnly", "SameSite=Strict"]
    if secure:
        attrs.append("Secure")
    return "; ".join(attrs)
