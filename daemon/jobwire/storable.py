"""Text the store can hold: what a broker may carry but PostgreSQL refuses, made storable.

PostgreSQL's ``text`` refuses NUL characters, ``jsonb`` refuses ``\\u0000`` and lone UTF-16
surrogates, and a btree entry (the dedup key's unique index) has a size limit. A broker
carries any of them. Every text a message puts into a job row passes through here, so one
odd header or message id never makes the store refuse a whole batch.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Mapping
from typing import Any

# A header value longer than this is replaced: headers are metadata, and the raw body is
# where large data belongs (it is kept as bytes).
MAX_HEADER_CHARS = 16_384
MAX_HEADERS = 256
# Well under a btree entry's limit (about 2,700 bytes), in bytes of UTF-8.
MAX_KEY_BYTES = 1_000
MAX_SHORT_TEXT = 1_000  # content types, handler names
_PREVIEW = 64


def problem_of(text: str) -> str | None:
    """Why PostgreSQL would refuse ``text`` (None: it would not)."""
    if "\x00" in text:
        return "contains a NUL character"
    if text.isascii():  # O(1) in CPython: most text needs no encoding to know
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode)"
    return None


# json.dumps recurses once per level (the interpreter's limit is 1,000), the server's jsonb
# parser has a stack limit of its own.
MAX_JSON_DEPTH = 900
MAX_INT_BITS = 14_000  # about 4,200 decimal digits, inside Python's 4,300-digit limit
# What json.dumps writes as an object key (it turns numbers, booleans and null into text).
_JSON_KEYS = (str, int, float, bool, type(None))
# Where a value sits, built only for an error message: (parent, key) pairs.
_Path = tuple[Any, Any] | None


def _path_text(root: str, path: _Path) -> str:
    """``payload.a[0].b`` from a (parent, key) chain."""
    parts: list[str] = []
    while path is not None:
        path, key = path
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return root + "".join(reversed(parts))


def json_problem(value: Any, root: str = "value") -> str | None:
    """Why ``value`` could not become a jsonb value (None: it can), saying where from
    ``root`` on (``payload.a[0]``): text jsonb cannot hold (NUL, a lone surrogate), NaN or
    Infinity, an integer too long to print, a type JSON has no value for, nesting deeper than
    json.dumps and the server go. Iterative, so the check itself cannot run out of stack."""
    stack: list[tuple[Any, int, _Path]] = [(value, 1, None)]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, str):
            problem = problem_of(item)
            if problem:
                return f"{_path_text(root, path)} {problem}"
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if item.bit_length() > MAX_INT_BITS:
                return f"{_path_text(root, path)} is an integer too long to write as JSON"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{_path_text(root, path)} is {item}, which JSON has no number for"
        elif isinstance(item, dict | list | tuple):
            if depth > MAX_JSON_DEPTH:
                return f"{root} is nested deeper than {MAX_JSON_DEPTH} levels"
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, _JSON_KEYS):
                        where = _path_text(root, path)
                        return f"a key in {where} is of type {type(key).__name__}, not text"
                    problem = problem_of(key) if isinstance(key, str) else None
                    if problem:
                        return f"a key in {_path_text(root, path)} {problem}"
                    stack.append((child, depth + 1, (path, str(key))))
            else:
                stack.extend((child, depth + 1, (path, i)) for i, child in enumerate(item))
        else:
            kind = type(item).__name__
            return f"{_path_text(root, path)} is of type {kind}, not JSON serialisable"
    return None


def escape(text: str) -> str:
    """A storable, readable and deterministic spelling of any text (NUL and surrogates as
    backslash escapes)."""
    if problem_of(text) is None:
        return text
    return (
        text.replace("\\", "\\\\")
        .replace("\x00", "\\x00")
        .encode("utf-8", "backslashreplace")
        .decode("utf-8")
    )


def storable_text(text: str | None, limit: int = MAX_SHORT_TEXT) -> str | None:
    """``text`` escaped and cut to ``limit`` characters; None stays None."""
    if text is None:
        return None
    clean = escape(text)
    return clean if len(clean) <= limit else clean[:limit]


_HASHED = "...sha256:"
_OCTETS = "base64:"


def storable_key(key: str | None) -> str | None:
    """A dedup key the unique index can hold, the same for the same input (so a redelivery
    still finds its row), and different for different inputs: escaped, and hashed when too
    long."""
    if key is None:
        return None
    clean = escape(key)
    # Hashed as well: an escaped key (its escapes are characters another key may hold as
    # they are, "id\x00" from a NUL or typed), and one that looks hashed already.
    if clean == key and len(key.encode("utf-8")) <= MAX_KEY_BYTES and _HASHED not in key:
        return clean
    # Of the key itself, not its escaped spelling: two keys never share a digest.
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{clean[:200]}{_HASHED}{digest}"


def octets_text(raw: bytes) -> str:
    """Broker bytes (a header, an id) as text, one text per byte string: UTF-8 as it is,
    anything else as ``base64:`` and its bytes; so is UTF-8 that begins with ``base64:``,
    which would otherwise read as the bytes it names."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _OCTETS + base64.b64encode(raw).decode("ascii")
    if text.startswith(_OCTETS):
        return _OCTETS + base64.b64encode(raw).decode("ascii")
    return text


def whole_text(text: str) -> str:
    """``octets_text`` of text decoded with ``surrogateescape`` (its bytes, as they came)."""
    if text.isascii() and not text.startswith(_OCTETS):
        return text  # the usual case, decided without encoding
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text  # a surrogate no decoder made: escaped where it is stored
    return octets_text(raw)


def _marker(what: str, value: str, why: str) -> str:
    preview = escape(value[:_PREVIEW])
    return f"[jobwire: {what} replaced: {why}; {len(value)} chars, began {preview!r}]"


def _plain(headers: Mapping[Any, Any]) -> bool:
    """Every name and value a short ASCII str without NUL: nothing to change."""
    for name, value in headers.items():
        if (
            type(name) is not str
            or type(value) is not str
            or not (name.isascii() and value.isascii())
            or len(value) > MAX_HEADER_CHARS
            or len(name) > 256
            or "\x00" in name
            or "\x00" in value
        ):
            return False
    return True


def storable_headers(headers: Mapping[Any, Any]) -> tuple[dict[str, str], list[str]]:
    """Headers as jsonb can hold them, and a note per header that had to change.

    A value the store cannot hold (NUL, lone surrogate, over ``MAX_HEADER_CHARS``) is
    replaced by a marker saying which and why; a name is escaped.
    """
    if len(headers) <= MAX_HEADERS and _plain(headers):
        # The common case, checked cheaply: every message passes here.
        return dict(headers), []
    out: dict[str, str] = {}
    notes: list[str] = []
    for index, (raw_name, raw_value) in enumerate(headers.items()):
        if index >= MAX_HEADERS:
            notes.append(f"{len(headers) - MAX_HEADERS} headers past the first {MAX_HEADERS}")
            out["jobwire-headers-dropped"] = str(len(headers) - MAX_HEADERS)
            break
        name = raw_name if isinstance(raw_name, str) else str(raw_name)
        clean_name = storable_text(name, 256) or ""
        if clean_name != name:
            notes.append(f"header name {clean_name!r}: {problem_of(name) or 'too long'}")
        value = raw_value if isinstance(raw_value, str) else str(raw_value)
        why = problem_of(value)
        if why is None and len(value) > MAX_HEADER_CHARS:
            why = f"longer than {MAX_HEADER_CHARS} characters"
        if why is not None:
            notes.append(f"header {clean_name!r}: {why}")
            value = _marker(f"header {clean_name!r}", value, why)
        out[clean_name] = value
    return out, notes
