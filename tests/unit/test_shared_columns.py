"""shared_value: a statement's column array that holds one value throughout goes as it."""

from __future__ import annotations

from typing import Any

from jobwire.store.rows import shared_value


def test_a_column_of_one_value_becomes_a_null_array_and_that_value() -> None:
    args: list[Any] = [["noop"] * 3, [0, 0, 0], [None, None]]
    assert [shared_value(args, i) for i in range(3)] == ["noop", 0, None]
    assert args == [None, None, None]


def test_a_column_whose_rows_differ_stays_an_array() -> None:
    args: list[Any] = [["a", "b"], [None, b"x"], [1, 1, 2]]
    assert [shared_value(args, i) for i in range(3)] == [None, None, None]
    assert args == [["a", "b"], [None, b"x"], [1, 1, 2]]


def test_an_empty_column_stays_an_empty_array() -> None:
    args: list[Any] = [[]]
    assert shared_value(args, 0) is None and args == [[]]
