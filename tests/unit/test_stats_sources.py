"""How `jobwire stats` shows each instance's sources, from the state rows they publish."""

from __future__ import annotations

from jobwire.cli.commands import _sources_shown


def test_a_source_up_shows_its_state_and_nothing_else_while_nothing_waits() -> None:
    state = {"sources": {"orders": {"state": "up", "waiting": 0, "held_back_s": 0.0}}}
    assert _sources_shown(state) == "orders=up"


def test_a_source_down_shows_its_last_error() -> None:
    state = {"sources": {"orders": {"state": "down", "last_error": "connection refused"}}}
    assert _sources_shown(state) == "orders=down (connection refused)"


def test_deliveries_waiting_for_a_slot_are_shown_with_how_long_they_were_held() -> None:
    state = {
        "sources": {
            "b": {"state": "up", "waiting": 120, "held_back_s": 0.31},
            "a": {"state": "up", "waiting": 5, "held_back_s": 0},
        }
    }
    assert _sources_shown(state) == "a=up [5 waiting], b=up [120 waiting, held back 0.3s]"


def test_rows_of_older_or_broken_instances_are_shown_without_failing() -> None:
    assert _sources_shown({}) == "-"
    assert _sources_shown("not a dict") == "-"
    assert _sources_shown({"sources": ["a list"]}) == "-"
    assert _sources_shown({"sources": {"x": "up", "y": {"state": "up", "waiting": "many"}}}) == (
        "x=?, y=up"
    )
    odd = {"state": "up", "waiting": True, "held_back_s": "1e999"}
    assert _sources_shown({"sources": {"z": odd}}) == "z=up"
    odd = {"state": "up", "waiting": 3, "held_back_s": True}
    assert _sources_shown({"sources": {"z": odd}}) == "z=up [3 waiting]"
