"""json_problem: the one check every way in uses for a JSON value jsonb must hold (payloads
from Python callers, the CLI and the memory store, handlers' results)."""

from __future__ import annotations

from typing import Any

import pytest

from jobwire.storable import MAX_JSON_DEPTH, json_problem


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": [1, "x\x00"]}, "payload.a[1] contains a NUL character"),
        ({"a": {"\ud800": 1}}, "a key in payload.a contains a lone surrogate"),
        ([0.5, float("nan")], "payload[1] is nan, which JSON has no number for"),
        ({"n": 10**5000}, "payload.n is an integer too long to write as JSON"),
        ({"s": {1, 2}}, "payload.s is of type set, not JSON serialisable"),
        ({(1, 2): "tuple key"}, "a key in payload is of type tuple, not text"),
    ],
)
def test_says_what_and_where(value: Any, expected: str) -> None:
    problem = json_problem(value, "payload")
    assert problem is not None and problem.startswith(expected), problem


def test_what_json_holds_passes() -> None:
    value = {
        "text": "\U0001f600",
        "n": 10**100,
        "f": 1.5,
        "ok": True,
        "none": None,
        1: "numeric key",
        "list": (1, [2, {"x": "y"}]),
    }
    assert json_problem(value) is None


def test_deep_nesting_is_refused_without_running_out_of_stack() -> None:
    deep: Any = []
    for _ in range(100_000):  # far past the interpreter's recursion limit
        deep = [deep]
    assert json_problem(deep, "payload") == (
        f"payload is nested deeper than {MAX_JSON_DEPTH} levels"
    )
    shallow: Any = []
    for _ in range(MAX_JSON_DEPTH - 1):
        shallow = [shallow]
    assert json_problem(shallow) is None
