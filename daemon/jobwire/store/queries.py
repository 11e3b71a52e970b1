"""Loads the named SQL statements from ``sql/queries.sql`` and the numbered migrations."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse_named_queries(text: str) -> dict[str, str]:
    """Split a file of ``-- name: X`` sections into ``{X: sql}``."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            # The later one would silently replace the earlier one's statement.
            raise ValueError(f"queries.sql names {name!r} twice")
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


@cache
def queries() -> dict[str, str]:
    """Every named statement jobwire runs."""
    text = resources.files("jobwire.store").joinpath("sql/queries.sql").read_text("utf-8")
    return parse_named_queries(text)


def migrations() -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` for each numbered migration, in order."""
    folder = resources.files("jobwire.store").joinpath("sql/migrations")
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d+)_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    return sorted(found)
