"""What the adapter base owns: run() through supervise, the pause flag and its hooks, the
connection generation, dropped-ack counting."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from structlog.testing import capture_logs

from jobwire.adapters.base import Adapter, Message, SourceState
from tests.support.fake_adapter import FakeAdapter
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(30)


class Probe(Adapter):
    """Records every call the base makes into an adapter."""

    kind = "probe"

    def __init__(self, connected: bool = False, sessions_fail: bool = False) -> None:
        super().__init__("probe")
        self.connected = connected
        self.sessions_fail = sessions_fail
        self.sessions: list[int] = []
        self.hooks: list[str] = []

    async def _session(self) -> None:
        self.sessions.append(self._new_generation())
        if self.sessions_fail:
            raise ConnectionRefusedError("refused")
        self.set_state(SourceState.UP)
        await asyncio.Event().wait()

    async def _on_pause(self) -> None:
        self.hooks.append(f"pause paused={self.paused}")

    async def _on_resume(self) -> bool:
        self.hooks.append(f"resume paused={self.paused}")
        return self.connected


def _sink(message: Message) -> None:  # pragma: no cover - no session delivers here
    raise AssertionError("nothing is delivered")


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_run_keeps_the_sink_and_runs_the_session_under_supervise() -> None:
    adapter = Probe()
    task = asyncio.create_task(adapter.run(_sink))
    try:
        await wait_for(lambda: adapter.state == SourceState.UP, timeout=5, what="up")
        assert adapter._sink is _sink
        assert adapter.sessions == [1]
    finally:
        await _cancel(task)


async def test_a_failing_session_is_started_again_with_a_new_generation() -> None:
    adapter = Probe(sessions_fail=True)
    task = asyncio.create_task(adapter.run(_sink))
    try:
        await wait_for(lambda: len(adapter.sessions) >= 2, timeout=10, what="a second session")
    finally:
        await _cancel(task)
    assert adapter.sessions[:2] == [1, 2]
    assert adapter.state == SourceState.DOWN
    assert adapter.last_error == "ConnectionRefusedError: refused"


async def test_pause_and_resume_set_the_flag_and_call_each_hook_once() -> None:
    adapter = Probe(connected=True)
    adapter.set_state(SourceState.UP)
    assert not adapter.paused
    await adapter.pause()
    assert adapter.paused
    assert adapter.state == SourceState.PAUSED
    assert adapter.hooks == ["pause paused=True"]  # the flag is set before the hook runs
    await adapter.resume()
    assert not adapter.paused
    assert adapter.hooks == ["pause paused=True", "resume paused=False"]
    # Connected: the state is the adapter's to set (a real one goes up in its hook).
    assert adapter.state == SourceState.PAUSED


async def test_resumed_without_a_connection_shows_connecting() -> None:
    adapter = Probe(connected=False)
    await adapter.pause()
    await adapter.resume()
    assert adapter.state == SourceState.CONNECTING


async def test_resume_without_a_pause_leaves_the_state_alone() -> None:
    adapter = Probe(connected=False)
    adapter.set_state(SourceState.DOWN, "refused")
    await adapter.resume()
    assert adapter.state == SourceState.DOWN


def test_a_stale_generation_is_not_current() -> None:
    adapter = Probe()
    first = adapter._new_generation()
    assert adapter.is_current(first)
    second = adapter._new_generation()
    assert second == first + 1
    assert adapter.is_current(second)
    assert not adapter.is_current(first)


def test_dropped_counts_and_logs_once_per_call() -> None:
    adapter = Probe()
    with capture_logs() as logs:
        adapter._dropped(3, "channel closed", action="ack")
        adapter._dropped(0, "nothing")  # nothing dropped: neither counted nor logged
        adapter._dropped(1, "OSError: broken pipe")
    assert adapter.dropped_acks == 4
    dropped = [e for e in logs if e["event"] == "acks_dropped"]
    assert [(e["count"], e["reason"]) for e in dropped] == [
        (3, "channel closed"),
        (1, "OSError: broken pipe"),
    ]
    assert dropped[0]["action"] == "ack"
    assert adapter.describe()["dropped_acks"] == 4


async def test_the_fake_adapter_counts_pauses_and_resumes_through_the_base() -> None:
    adapter = FakeAdapter()
    await adapter.pause()
    assert adapter.paused and adapter.pauses == 1
    assert adapter.state == SourceState.PAUSED
    await adapter.resume()
    assert not adapter.paused and adapter.resumes == 1
    assert adapter.state == SourceState.UP
