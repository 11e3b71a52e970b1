"""How many slots the pool's unwritten outcomes hold: enough to slow a pool whose store
writes slowly, never the batch being written (the next claim overlaps that write)."""

from __future__ import annotations

from jobwire.config import parse_config
from jobwire.models import JobStatus, Outcome
from jobwire.worker.state import PoolState


def state_with(outcomes: int, flushing: int) -> PoolState:
    config = parse_config("workers: {concurrency: 256, completion_batch: 200}", "f.yaml")
    state = PoolState(config, "w1")
    state.outcomes = [Outcome(i, 1, JobStatus.SUCCEEDED, 0.0) for i in range(outcomes)]
    state.flushing = flushing
    return state


def test_one_batch_waiting_holds_no_slot() -> None:
    assert state_with(200, 0).free_total() == 256


def test_outcomes_past_a_batch_hold_their_slots() -> None:
    assert state_with(300, 0).free_total() == 156


def test_the_batch_being_written_holds_no_slot() -> None:
    assert state_with(400, 200).free_total() == 256
    assert state_with(450, 200).free_total() == 206


def test_a_failed_write_gives_the_pool_its_brake_back() -> None:
    """The completer sets flushing to 0 when the store fails: all waiting outcomes count."""
    assert state_with(400, 0).free_total() == 56
