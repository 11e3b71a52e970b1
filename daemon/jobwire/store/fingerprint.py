"""What groups failures: an error's first line with what varies replaced by placeholders.

The same function as ``error_fingerprint`` in migration 0010 (PostgreSQL computes it when a
row becomes failed); this one serves the memory store, and a test holds the two equal.
"""

from __future__ import annotations

import re

MAX_CHARS = 200
NO_MESSAGE = "(no message)"
# In the SQL function's order: a quoted string may hold digits, a path may hold a number.
_STEPS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<str>"),
    (
        re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"),
        "<uuid>",
    ),
    (
        re.compile(r"0[xX][0-9a-fA-F]+|\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{8,}\b"),
        "<hex>",
    ),
    (re.compile(r"(^|[\s=(:])(/[^\s/]+)+/?"), r"\1<path>"),
    (re.compile(r"[0-9]+([.][0-9]+)?"), "<n>"),
    (re.compile(r"\s+"), " "),
)


def error_fingerprint(error: str | None) -> str:
    """``ValueError: timeout after <n>s on id <n>`` for ``... after 3.2s on id 81723``."""
    text = (error or "").split("\n", 1)[0]
    for pattern, placeholder in _STEPS:
        text = pattern.sub(placeholder, text)
    return text.strip()[:MAX_CHARS] or NO_MESSAGE
