"""Cumulative acks: frames only for the settled run at the head of the line, in order, so
the broker never takes a verdict jobwire did not give."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jobwire.adapters.stomp.order import DeliveryOrder


def _line(count: int) -> DeliveryOrder:
    order = DeliveryOrder()
    for n in range(count):
        order.delivered(f"m{n}")
    return order


def test_a_batch_in_order_is_one_ack_naming_its_last() -> None:
    order = _line(5)
    assert order.settle(["m0", "m1", "m2"], "ack") == [("ack", "m2")]
    assert order.settle(["m3", "m4"], "ack") == [("ack", "m4")]
    assert len(order) == 0


def test_a_verdict_behind_an_unsettled_delivery_waits_for_it() -> None:
    order = _line(4)
    assert order.settle(["m0", "m2", "m3"], "ack") == [("ack", "m0")]
    assert len(order) == 3  # m1 waits; m2 and m3 wait behind it
    assert order.settle(["m1"], "ack") == [("ack", "m3")]
    assert len(order) == 0


def test_runs_of_nacks_and_acks_each_get_their_own_frame_in_order() -> None:
    order = _line(6)
    assert order.settle(["m2", "m3"], "nack") == []
    assert order.settle(["m5"], "ack") == []
    assert order.settle(["m0", "m1", "m4"], "ack") == [
        ("ack", "m1"),
        ("nack", "m3"),
        ("ack", "m5"),
    ]


def test_unknown_and_repeated_ids_are_ignored() -> None:
    order = _line(2)
    assert order.settle(["other-connection"], "ack") == []
    assert order.settle(["m0"], "ack") == [("ack", "m0")]
    assert order.settle(["m0"], "nack") == []  # settled already: not nacked after its ack
    order.settle(["m1"], "nack")
    assert len(order) == 0


@given(st.lists(st.tuples(st.integers(0, 19), st.booleans()), max_size=60))
def test_what_the_frames_settle_is_exactly_what_was_decided(
    verdicts: list[tuple[int, bool]],
) -> None:
    """Replaying the frames as the broker applies them (each settles every earlier unsettled
    delivery) gives every delivery the verdict jobwire gave it first, and none without one."""
    order = _line(20)
    decided: dict[str, str] = {}
    applied: dict[str, str] = {}
    for n, ok in verdicts:
        ack_id, action = f"m{n}", "ack" if ok else "nack"
        decided.setdefault(ack_id, action)
        for verdict, named in order.settle([ack_id], action):
            for k in range(int(named[1:]) + 1):
                applied.setdefault(f"m{k}", verdict)
    for ack_id, verdict in applied.items():
        assert decided.get(ack_id) == verdict
    settled_prefix = 0
    while f"m{settled_prefix}" in decided:
        settled_prefix += 1
    assert set(applied) == {f"m{k}" for k in range(settled_prefix)}
