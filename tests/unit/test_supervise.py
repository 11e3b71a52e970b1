"""supervise(): every pass waits, paused or not (issue 18: 28,671 reconnects in 0.5 s)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from jobwire.adapters.amqp import AmqpSource
from jobwire.adapters.base import Adapter, Backoff, SourceState, supervise
from jobwire.adapters.kafka import KafkaSource
from jobwire.adapters.mqtt import MqttSource
from jobwire.adapters.stomp import StompSource
from tests.support.fake_adapter import FakeAdapter
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(30)


async def _calls_in(
    adapter: FakeAdapter, session: Callable[[], Awaitable[None]], backoff: Backoff, seconds: float
) -> None:
    """Run supervise() on ``session`` for ``seconds`` (the window is what is measured)."""
    task = asyncio.create_task(supervise(adapter, session, backoff))
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_session_ending_at_once_while_paused_is_not_retried_in_a_spin() -> None:
    adapter = FakeAdapter()
    await adapter.pause()
    calls = 0

    async def session() -> None:
        nonlocal calls
        calls += 1  # the broker closed the connection, or a pause ended it
        await asyncio.sleep(0)  # a real session awaits something: a spin must not hang here

    await _calls_in(adapter, session, Backoff(), 0.5)
    assert 1 <= calls <= 3, calls
    assert adapter.state == SourceState.PAUSED  # still what operators see


async def test_a_failing_session_while_paused_backs_off_and_stays_paused() -> None:
    """The broker is down and the intake holds the source: connecting fails at once."""
    adapter = FakeAdapter()
    await adapter.pause()
    calls = 0

    async def session() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise ConnectionRefusedError("connection refused")

    backoff = Backoff()
    await _calls_in(adapter, session, backoff, 0.5)
    assert 1 <= calls <= 3, calls
    assert backoff.attempt >= 1  # an outage: the delay grows
    assert adapter.state == SourceState.PAUSED
    assert adapter.last_error == "ConnectionRefusedError: connection refused"


async def test_pauses_that_end_sessions_do_not_grow_the_delay() -> None:
    """Flow control may pause and resume often: a resume must not wait out a grown delay."""
    adapter = FakeAdapter()
    await adapter.pause()
    calls = 0

    async def session() -> None:
        nonlocal calls
        calls += 1

    backoff = Backoff(initial=0.02)
    task = asyncio.create_task(supervise(adapter, session, backoff))
    try:
        await wait_for(lambda: calls >= 5, timeout=5, what="five paused sessions")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert backoff.attempt == 0


async def test_a_failing_session_when_not_paused_goes_down_and_backs_off() -> None:
    adapter = FakeAdapter()
    calls = 0

    async def session() -> None:
        nonlocal calls
        calls += 1
        raise OSError("unreachable")

    await _calls_in(adapter, session, Backoff(), 0.5)
    assert 1 <= calls <= 3, calls
    assert adapter.state == SourceState.DOWN


def _adapters() -> list[Adapter]:
    from jobwire.adapters.amqp.adapter import AmqpAdapter
    from jobwire.adapters.kafka.adapter import KafkaAdapter
    from jobwire.adapters.mqtt.adapter import MqttAdapter
    from jobwire.adapters.stomp.adapter import StompAdapter

    route = {"handler": "noop"}
    return [
        AmqpAdapter(AmqpSource(name="a", type="amqp", queue="q", route=route)),
        StompAdapter(StompSource(name="s", type="stomp", destination="/queue/q", route=route)),
        KafkaAdapter(KafkaSource(name="k", type="kafka", topics=["t"], route=route)),
        MqttAdapter(MqttSource(name="m", type="mqtt", topics=["t"], route=route)),
    ]


@pytest.mark.parametrize("kind", ["amqp", "stomp", "kafka", "mqtt"])
async def test_resumed_while_disconnected_is_no_longer_shown_paused(kind: str) -> None:
    """Else a broker outage after the resume kept it "paused" (and, before, spinning)."""
    [adapter] = [a for a in _adapters() if a.kind == kind]
    await adapter.pause()
    assert adapter.state == SourceState.PAUSED
    assert adapter.paused  # the base's flag, whatever the broker's way of pausing
    await adapter.resume()
    assert adapter.state == SourceState.CONNECTING
    assert not adapter.paused
    assert adapter.describe()["dropped_acks"] == 0

    async def session() -> None:
        raise ConnectionRefusedError("connection refused")

    task = asyncio.create_task(supervise(adapter, session, Backoff()))
    try:
        await wait_for(lambda: adapter.state == SourceState.DOWN, timeout=5, what="down")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_cancelled_error_the_client_raises_itself_is_a_failure_not_a_stop() -> None:
    # aiokafka's stop after a long broker outage cancels its own fetch tasks and lets the
    # CancelledError escape: supervise() took it for a stop, and the source stayed down
    # for good (found by a drill).
    adapter = FakeAdapter()
    calls = 0

    async def session() -> None:
        nonlocal calls
        calls += 1
        inner = asyncio.create_task(asyncio.sleep(60))
        await asyncio.sleep(0)
        inner.cancel()
        await inner  # raises CancelledError here, though nobody cancelled this task

    task = asyncio.create_task(supervise(adapter, session, Backoff(initial=0.01, maximum=0.02)))
    await wait_for(lambda: calls >= 3, timeout=10, what="the session tried again")
    assert not task.done()
    assert adapter.last_error is not None and "CancelledError" in adapter.last_error
    task.cancel()  # and a real stop still stops it
    with pytest.raises(asyncio.CancelledError):
        await task


def test_an_error_is_described_with_its_cause_when_that_says_more() -> None:
    from jobwire.adapters.base import described

    try:
        try:
            raise RuntimeError("[code:142] Session taken over")
        except RuntimeError as cause:
            raise ConnectionError("Disconnected during message iteration") from cause
    except ConnectionError as exc:
        text = described(exc)
    assert text == (
        "ConnectionError: Disconnected during message iteration"
        " (RuntimeError: [code:142] Session taken over)"
    )
