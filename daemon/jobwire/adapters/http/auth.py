"""A webhook request's credentials: its bearer token and its body's HMAC signature, both
compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from jobwire.adapters.http.config import HttpSource, SignatureConfig

_MAX_STAMP_DIGITS = 12


def token_problem(cfg: HttpSource, headers: Mapping[str, str]) -> str | None:
    """Why the request's bearer token is not the source's, or None when it is (or none is
    asked for)."""
    if cfg.token is None:
        return None
    scheme, _, given = headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return "a bearer token is required (Authorization: Bearer ...)"
    given_bytes = _utf8(given.strip())
    if given_bytes is None or not hmac.compare_digest(given_bytes, cfg.token.encode()):
        return "the bearer token is not this source's"
    return None


def _utf8(text: str) -> bytes | None:
    """A header value's bytes as sent (aiohttp decodes undecodable bytes as surrogate
    escapes), or None when it holds a character no request could carry."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None


def signature_problem(
    cfg: SignatureConfig | None,
    headers: Mapping[str, str],
    body: bytes,
    now: float | None = None,
) -> str | None:
    """Why the body's signature does not check out, or None when it does (or none is asked
    for). Never says what the right signature would have been."""
    if cfg is None:
        return None
    name = cfg.header_name()
    value = headers.get(name, "").strip()
    if not value:
        return f"the {name} header is missing"
    key = cfg.secret.encode()
    if cfg.scheme == "stripe":
        return _stripe_problem(cfg, name, value, key, body, time.time() if now is None else now)
    given = value
    if cfg.scheme == "github":
        prefix, sep, given = value.partition("=")
        if not sep or prefix != "sha256":
            return f"{name} must be sha256=<hex>"
    else:
        given = value.removeprefix("sha256=")
    expected = hmac.new(key, body, hashlib.sha256).hexdigest()
    # A hex signature is ASCII: anything else cannot match (and must not be encoded).
    if not given.isascii() or not hmac.compare_digest(given.lower().encode(), expected.encode()):
        return f"the {name} signature does not match the body"
    return None


def _stripe_problem(
    cfg: SignatureConfig, name: str, value: str, key: bytes, body: bytes, now: float
) -> str | None:
    """Stripe's scheme: ``t=<unix time>,v1=<hex>[,v1=...]`` signs ``<t>.<body>``; one v1
    matching, within the tolerance, passes."""
    stamp: str | None = None
    candidates: list[str] = []
    for part in value.split(","):
        label, _, item = part.strip().partition("=")
        if label == "t":
            stamp = item
        elif label == "v1" and item.isascii():  # hex: anything else cannot match
            candidates.append(item)
    # A unix time has at most 12 digits for tens of thousands of years; a longer one
    # would only make int() and the subtraction below fail.
    if (
        stamp is None
        or not stamp.isascii()
        or not stamp.isdigit()
        or len(stamp) > _MAX_STAMP_DIGITS
        or not candidates
    ):
        return f"{name} must be t=<unix time>,v1=<hex>"
    if abs(now - int(stamp)) > cfg.tolerance:
        return f"the {name} timestamp is outside the tolerance of {cfg.tolerance:g}s"
    expected = hmac.new(key, stamp.encode() + b"." + body, hashlib.sha256).hexdigest().encode()
    # Every candidate is compared (no early exit on the first match's position).
    matched = [hmac.compare_digest(c.lower().encode(), expected) for c in candidates]
    return None if any(matched) else f"the {name} signature does not match the body"


def sign(cfg: SignatureConfig, body: bytes, now: float | None = None) -> str:
    """The header value a sender would put on ``body`` (tests and ``curl`` recipes)."""
    key = cfg.secret.encode()
    if cfg.scheme == "stripe":
        stamp = str(int(time.time() if now is None else now))
        digest = hmac.new(key, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        return f"t={stamp},v1={digest}"
    digest = hmac.new(key, body, hashlib.sha256).hexdigest()
    return f"sha256={digest}" if cfg.scheme == "github" else digest
