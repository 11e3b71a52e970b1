"""Selectors that read a value from a message: ``header:X``, ``json:$.a.b``, ``property:X``,
``query:X`` (an HTTP source's query parameter)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

_JSON_STEP = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]|\[\"([^\"]+)\"\]|\['([^']+)'\]")

Kind = Literal["header", "json", "property", "query"]
_MISSING = object()


@dataclass(frozen=True)
class Selector:
    """A parsed selector: where to look and the name or JSON path steps."""

    kind: Kind
    name: str
    steps: tuple[str | int, ...] = ()

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    def select(self, headers: dict[str, str], properties: dict[str, Any], payload: Any) -> Any:
        """The selected value, or None when it is absent."""
        if self.kind == "header":
            return headers.get(self.name)
        if self.kind == "property":
            return properties.get(self.name)
        if self.kind == "query":
            # HTTP sources put the request's query parameters there; others have none.
            query = properties.get("query")
            return query.get(self.name) if isinstance(query, dict) else None
        node: Any = payload
        for step in self.steps:
            if isinstance(step, int):
                if not isinstance(node, list) or step >= len(node):
                    return None
                node = node[step]
            else:
                if not isinstance(node, dict) or step not in node:
                    return None
                node = node[step]
        return node


def parse_selector(text: str) -> Selector:
    """Parse ``header:NAME``, ``property:NAME``, ``query:NAME`` or ``json:$.path[0].x``;
    ValueError if bad."""
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise ValueError(
            f"{text!r} is not a selector: use header:NAME, json:$.path, property:NAME or query:NAME"
        )
    if kind in ("header", "property", "query"):
        return Selector(kind, rest)  # type: ignore[arg-type]
    if kind != "json":
        raise ValueError(
            f"unknown selector kind {kind!r} in {text!r}: use header, json, property, query"
        )
    if not rest.startswith("$"):
        raise ValueError(f"JSON path {rest!r} must start with $ (e.g. json:$.type)")
    steps: list[str | int] = []
    pos = 1
    while pos < len(rest):
        match = _JSON_STEP.match(rest, pos)
        if not match:
            raise ValueError(f"cannot parse JSON path {rest!r} at {rest[pos:]!r}")
        name, index, quoted1, quoted2 = match.groups()
        steps.append(int(index) if index is not None else (name or quoted1 or quoted2))
        pos = match.end()
    return Selector("json", rest, tuple(steps))
