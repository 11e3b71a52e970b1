"""What every broker adapter is: a state, a pause flag, a connection generation, settlement
defaults and the shared reconnect supervisor that runs each adapter's sessions.

An adapter decodes deliveries into ``Message``s and hands them to a sink (the intake). It
settles each delivery only when the intake says so: ``ack`` after the job row committed,
``nack(requeue=True)`` when the store failed, ``reject`` to dead-letter. It never writes SQL.
``Message`` and the sink it goes to belong to the core (``jobwire.models``), which defines
what it takes from a source; they are re-exported here for adapters.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from jobwire.backoff import Backoff
from jobwire.config import TlsConfig
from jobwire.models import DeadLetter, Message, MessageSink, OffsetReader

__all__ = [
    "Adapter",
    "Backoff",
    "DeadLetter",
    "Message",
    "MessageSink",
    "OffsetReader",
    "SourceState",
    "supervise",
    "tls_context",
]

log = structlog.get_logger("jobwire.adapters")


class SourceState(enum.StrEnum):
    """Where a source stands, as shown in logs and stats."""

    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    PAUSED = "paused"
    STOPPED = "stopped"


def tls_context(tls: TlsConfig | None, required: bool = False) -> ssl.SSLContext | None:
    """An SSL context from a source's ``tls:`` settings; None when neither it nor the URL
    scheme (``required``: amqps://, mqtts://, Kafka SSL) asks for TLS."""
    if tls is None and not required:
        return None
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls and tls.ca_file else None)
    if tls is not None and tls.cert_file:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if tls is not None and not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class Adapter(abc.ABC):
    """Base of every broker adapter: the supervised run, the pause flag, the connection
    generation, dropped-ack counting, state bookkeeping and settlement defaults."""

    kind: str = "abstract"
    default_dedup: str | None = None  # the route's dedup_key when it names none
    # True: a requeued delivery comes back from the broker (AMQP, STOMP, MQTT). False: the
    # source is a log read in order (Kafka); the intake keeps a batch the store could not
    # take and stores it again itself, since skipping it would let later offsets pass it.
    requeue_redelivers: bool = True
    # True: a delivery may wait unacknowledged for a free slot (the broker keeps it; see
    # intake/pacing.py). False: someone waits on its answer (an HTTP caller).
    may_wait: bool = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = SourceState.STOPPED
        self.last_error: str | None = None
        self.state_since = time.time()
        self.dropped_acks = 0  # settlements that could not be sent; the broker redelivers
        self._sink: MessageSink | None = None
        self._paused = False
        # One per connection: a delivery's ack belongs to the connection it came on only.
        self._generation = 0
        self._log = log.bind(source=name, kind=self.kind)

    def set_state(self, state: SourceState, error: str | None = None) -> None:
        """Record and log a state change (only changes are logged)."""
        if error is not None:
            self.last_error = error
        if state == self.state:
            return
        self.state = state
        self.state_since = time.time()
        level = "warning" if state == SourceState.DOWN else "info"
        getattr(self._log, level)("source_state", state=str(state), error=error)

    def describe(self) -> dict[str, Any]:
        """State for stats and readiness."""
        return {
            "kind": self.kind,
            "state": str(self.state),
            "since": self.state_since,
            "last_error": self.last_error,
            "dropped_acks": self.dropped_acks,
        }

    # -- running ---------------------------------------------------------------------------

    async def run(self, sink: MessageSink) -> None:
        """Connect, consume into ``sink``, and reconnect with backoff until cancelled."""
        self._sink = sink
        await supervise(self, self._session)

    @abc.abstractmethod
    async def _session(self) -> None:
        """One connection: connect and consume until it ends (return or raise)."""

    def _new_generation(self) -> int:
        """A new connection is up: deliveries of every earlier one can no longer be settled."""
        self._generation += 1
        return self._generation

    def is_current(self, generation: int) -> bool:
        """Whether ``generation`` is the latest connection's."""
        return generation == self._generation

    def _dropped(self, count: int, reason: str, **fields: Any) -> None:
        """Count settlements that could not be sent (the broker redelivers; the dedup key
        makes each redelivery no new job), with one log line for them all."""
        if count <= 0:
            return
        self.dropped_acks += count
        self._log.warning("acks_dropped", count=count, reason=reason, **fields)

    # -- flow control ----------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """Held by the intake: taking no new deliveries until resume()."""
        return self._paused

    async def pause(self) -> None:
        """Stop taking new deliveries (the store is down or the backlog is high)."""
        self._paused = True
        await self._on_pause()
        self.set_state(SourceState.PAUSED)

    async def resume(self) -> None:
        """Take deliveries again (at once if connected, else when the session reconnects)."""
        self._paused = False
        if not await self._on_resume() and self.state == SourceState.PAUSED:
            # Not connected (the broker is out too): no longer held, so a failed reconnect
            # shows as down, not paused.
            self.set_state(SourceState.CONNECTING)

    @abc.abstractmethod
    async def _on_pause(self) -> None:
        """Stop this broker's deliveries (the flag is already set)."""

    @abc.abstractmethod
    async def _on_resume(self) -> bool:
        """Take this broker's deliveries again; True when connected (the state is then
        the adapter's to set), False when the next session does it."""

    # -- settling --------------------------------------------------------------------------

    async def ack_many(self, messages: Sequence[Message]) -> None:
        """Acknowledge a committed batch; adapters with cumulative acks override this."""
        for message in messages:
            if message.ack is not None:
                await message.ack()

    async def requeue_many(self, messages: Sequence[Message]) -> None:
        """Send a batch back to the broker (NACK, requeue); adapters may do it in one go."""
        for message in messages:
            if message.nack is not None:
                await message.nack(True)

    async def publish(
        self,
        body: bytes,
        headers: dict[str, str],
        count: int = 1,
        content_type: str | None = "application/json",
        topic: str | None = None,
    ) -> int:  # pragma: no cover - per adapter
        """Send test messages through this source's broker (to ``topic``, a topic or routing
        key, when given); returns how many were confirmed."""
        raise NotImplementedError(f"{self.kind} sources cannot publish")


async def supervise(
    adapter: Adapter,
    session: Callable[[], Awaitable[None]],
    backoff: Backoff | None = None,
) -> None:
    """Run ``session`` (connect and consume until the connection ends) again and again.

    A session that returns or raises means the connection is gone: the adapter goes
    ``down``, waits a jittered, growing delay, and connects afresh. Every pass waits, paused
    or not: with the broker down, a paused source's session fails at once, and skipping the
    wait would reconnect in a tight loop. Cancellation stops it.
    """
    backoff = backoff or Backoff()
    while True:
        if adapter.state != SourceState.PAUSED:
            adapter.set_state(SourceState.CONNECTING)
        started = time.monotonic()
        failed = True
        try:
            await session()
            error = "connection closed"
            failed = False
        except asyncio.CancelledError as exc:
            if _stopping():
                raise
            # Not ours: a client's cancellation of its own tasks that escaped it (aiokafka's
            # stop after a long broker outage). Taken for a stop, it ended the source for
            # good, "down" and never reconnecting (found by a drill).
            error = f"CancelledError: {exc or 'raised by the client'}"
        except Exception as exc:  # noqa: BLE001 - any failure means: reconnect
            error = described(exc)
        if time.monotonic() - started > 10:
            backoff.reset()  # it was up for a while: this is a fresh outage
        if adapter.state == SourceState.PAUSED and not failed:
            # Ended by a pause (STOMP disconnects while held): not an outage, and the next
            # session waits for resume() itself. A short fixed wait, so that flow control
            # toggling a pause often never grows the delay a resume then waits out.
            await asyncio.sleep(backoff.initial)
            continue
        delay = backoff.next()
        if adapter.state == SourceState.PAUSED:
            # Held by the intake and the broker is out too: operators keep seeing "paused"
            # (the intake resumes it), but it is still an outage, retried with backoff.
            adapter.last_error = error
        else:
            adapter.set_state(SourceState.DOWN, error)
        adapter._log.warning(
            "source_reconnecting",
            retry_in=round(delay, 2),
            error=error,
            paused=adapter.state == SourceState.PAUSED,
        )
        await asyncio.sleep(delay)


def _stopping() -> bool:
    """Whether the running task itself is being cancelled (a stop), not a stray
    CancelledError from a library's own task."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def described(exc: BaseException) -> str:
    """``Type: message``, and the cause's when it says more (aiomqtt's "Disconnected"
    carries the broker's reason code in its cause)."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({type(cause).__name__}: {cause})"
    return text


async def stop_quietly(stop: Awaitable[object], seconds: float = 10.0) -> None:
    """Await a client's stop with a deadline, its failures swallowed: a CancelledError it
    raises itself too (aiokafka's stop cancels and awaits its own fetch tasks and lets
    that escape), unless the running task is being cancelled."""
    try:
        async with asyncio.timeout(seconds):
            await stop
    except asyncio.CancelledError:
        if _stopping():
            raise
    except Exception:  # noqa: BLE001 - a client that fails to stop is let go
        pass
