"""The outbox relay: one service per output sends the outbox's rows through that output's
broker with its confirmation, and marks them sent only after it.

Rows are claimed with a lease in a short transaction (never a transaction held across a
publish), so several instances share an output's rows, and a relay that dies leaves rows
another takes once their lease has passed. While the broker is away nothing is claimed and
the rows wait; a crash between the broker's confirmation and the mark sends those rows
again, with the same message id (``jobwire-<job id>-<n>``) for a consumer to drop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from jobwire import failpoints
from jobwire.backoff import Backoff
from jobwire.config import Config, OutputBase
from jobwire.effects import Claim, OutboxRow, OutputPublisher, Published

__all__ = ["OutboxRelay", "OutputPublisher", "Published", "RelayCounters"]
from jobwire.store.base import OutboxStore, StoreUnavailable

log = structlog.get_logger("jobwire.outbox")


@dataclass
class RelayCounters:
    """What one relay did since start, for stats."""

    sent: int = 0
    failed: int = 0
    parked: int = 0  # rows set aside for good (failed_at)
    batches: int = 0
    state: str = "connecting"
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class OutboxRelay:
    """Drains one output's outbox rows in batches; a service (start, stop)."""

    def __init__(
        self,
        output: str,
        publisher: OutputPublisher,
        store: OutboxStore,
        *,
        batch_size: int = 500,
        poll_interval: float = 0.2,
        publish_timeout: float = 30.0,
        max_attempts: int = 10,
    ) -> None:
        self.output = output
        self.name = f"outbox:{output}"
        self.publisher = publisher
        self.store = store
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.publish_timeout = publish_timeout
        self.max_attempts = max_attempts
        # Longer than a claimed batch can stay unconfirmed, so a live relay's rows are never
        # taken over: the next batch is claimed while the one ahead publishes (up to
        # publish_timeout), then publishes itself (up to publish_timeout again), and the
        # marking after it takes a moment: 3x leaves a whole publish_timeout of margin. It
        # is also how long the rows of a relay that died wait for another.
        self.lease = max(10.0, 3 * publish_timeout)
        self.counters = RelayCounters()
        self._wake = asyncio.Event()
        self._backoff = Backoff(initial=0.2, maximum=10.0)
        # Rows the broker confirmed but the store could not mark yet: marked before the
        # next claim (their lease keeps them from being sent again meanwhile), and the
        # leases of the batches they came from (settled with them).
        self._unmarked: list[int] = []
        self._unmarked_leases: list[int] = []
        self._connected = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start relaying (connects in the background: a broker that is away must not
        stop the daemon from starting)."""
        self._task = asyncio.create_task(self.run(), name=f"jobwire-{self.name}")

    async def stop(self) -> None:
        """Stop after the batch in flight (bounded), then close the connection."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=self.publish_timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.publisher.close(), 5)
        self.counters.state = "stopped"

    def wake(self) -> None:
        """Look for rows now rather than at the next poll."""
        self._wake.set()

    def describe(self) -> dict[str, Any]:
        """State and counters, for stats and /readyz."""
        c = self.counters
        return {
            "state": c.state,
            "sent": c.sent,
            "failed": c.failed,
            "parked": c.parked,
            "batches": c.batches,
            "last_error": c.last_error,
        }

    async def run(self) -> None:
        """Connect, claim, publish, mark; back off on failures; until cancelled."""
        while True:
            try:
                busy = await self.drain()
            except StoreUnavailable as exc:
                self._failed("outbox_store_unavailable", str(exc), state=self.counters.state)
                await self._backoff.sleep()
                continue
            except Exception as exc:  # noqa: BLE001 - the relay must outlive any one failure
                await self._disconnect(f"{type(exc).__name__}: {exc}")
                await self._backoff.sleep()
                continue
            if not busy:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval):
                        await self._wake.wait()

    async def drain(self) -> bool:
        """Connect if needed, then send batch after batch until none is left; True when
        there was work. While the broker confirms one batch, the one before is marked and
        the next claimed: the store's work and the broker's overlap. The next batch never
        holds a key of the one in flight (the claim skips keys with leased rows), so the
        order per key holds."""
        await self._mark_unmarked()
        if not self._connected:
            await self.publisher.connect()
            self._connected = True
            self.counters.state = "up"
            log.info("outbox_connected", output=self.output)
        rows = await self.store.claim_outbox(self.output, self.batch_size, self.lease)
        if not rows:
            return False
        while rows:
            following = await self._send(rows)
            if following is None:
                break  # a failure: released, disconnected, backed off
            rows = following
        await self._mark_unmarked()
        return True

    async def _send(self, rows: Claim) -> Claim | None:
        """Publish ``rows`` while marking the previous batch and claiming the next; returns
        the next batch, or None after a failure (its rows and the next batch's released)."""
        publishing = asyncio.ensure_future(self.publisher.publish(rows, self.publish_timeout))
        following = Claim()
        problem: BaseException | None = None
        try:
            # The previous batch is marked in the claim's transaction. Where the claim of
            # this batch stopped (its resume: before the first row it passed over), the
            # next goes on (see outbox_claim); a drain's first claim, and every one after a
            # failure, starts from the oldest row.
            marking, leases = self._unmarked, self._unmarked_leases
            following = await self.store.claim_outbox(
                self.output,
                self.batch_size,
                self.lease,
                after=rows.resume,
                sent=marking,
                leases=leases,
            )
            self._unmarked = self._unmarked[len(marking) :]
            self._unmarked_leases = self._unmarked_leases[len(leases) :]
        except BaseException as exc:  # noqa: BLE001 - raised again once the batch is settled
            problem = exc
        try:
            result = await publishing
        except BaseException:
            # Cancelled (a stop) or a bug: the rows go back now, not after their lease.
            ids = [r.id for r in rows + following]
            await asyncio.shield(self._release(ids, "relay stopped", rows, following))
            raise
        self.counters.batches += 1
        failpoints.hit("outbox_confirmed")  # drills: a crash between confirm and mark
        confirmed, failed = _settle(rows, result)
        # Marked with the next batch's claim (or at the end of the drain).
        self._unmarked += confirmed
        if rows.lease is not None:
            self._unmarked_leases.append(rows.lease)
        self.counters.sent += len(confirmed)
        if problem is not None:
            ids = [r.id for r in failed + following]
            await asyncio.shield(self._release(ids, "relay", rows, following))
            raise problem
        if failed:
            reason = result.error or "not confirmed by the broker"
            self.counters.failed += len(failed)
            # Charged with the failure: the first row not confirmed (the one the broker
            # stopped at, or refused) and those refused for good; the rest only waited.
            failed_ids = {r.id for r in failed}
            if failed_ids <= result.permanent:
                # Only rows refused for good (too large, an unusable address): set aside,
                # and the connection is fine, so the next batch goes on at once.
                await self._fail(sorted(failed_ids), reason, result.permanent, rows)
                self._backoff.reset()
                return following
            # The first row not confirmed that was not refused for good: the one the broker
            # stopped at (a row refused for good blocks nothing, so one can come first).
            stopped = next((r.id for r in failed if r.id not in result.permanent), None)
            first = set() if result.blameless or stopped is None else {stopped}
            charged = first | (result.permanent & failed_ids)
            waited = [r.id for r in failed + following if r.id not in charged]
            await self._fail(sorted(charged), reason, result.permanent, rows)
            await self._release(waited, reason, rows, following)
            await self._mark_unmarked()
            await self._disconnect(reason)
            await self._backoff.sleep()
            return None
        self._backoff.reset()
        return following

    async def _fail(
        self, ids: list[int], reason: str, permanent: frozenset[int], batch: Claim
    ) -> None:
        with contextlib.suppress(StoreUnavailable):
            parked = await self.store.fail_outbox(
                ids, reason, self.max_attempts, sorted(permanent), _leases(batch)
            )
            if parked:
                self.counters.parked += len(parked)
                log.error("outbox_message_set_aside", output=self.output, ids=parked, error=reason)

    async def _mark_unmarked(self) -> None:
        """Mark the rows confirmed so far (kept for the next try if the store is away:
        their lease keeps them from being sent again meanwhile)."""
        if self._unmarked or self._unmarked_leases:
            await self.store.mark_outbox_sent(self._unmarked, self._unmarked_leases)
            self._unmarked, self._unmarked_leases = [], []

    async def _release(self, ids: list[int], reason: str, *batches: Claim) -> None:
        with contextlib.suppress(StoreUnavailable):
            # Unreleased rows are taken again once their lease passes.
            await self.store.release_outbox(ids, reason, _leases(*batches))

    async def _disconnect(self, reason: str) -> None:
        self._failed("outbox_publish_failed", reason, state="down")
        self._connected = False
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.publisher.close(), 5)

    def _failed(self, event: str, reason: str, state: str) -> None:
        changed = self.counters.last_error != reason or self.counters.state != state
        self.counters.last_error = reason
        self.counters.state = state
        if changed:  # one line per change, not one per retry while a broker is away
            log.warning(event, output=self.output, error=reason)


def _leases(*batches: Claim) -> list[int]:
    """The leases holding these batches' rows (the relay names its own when it settles)."""
    return [b.lease for b in batches if b.lease is not None]


def _settle(rows: list[OutboxRow], result: Published) -> tuple[list[int], list[OutboxRow]]:
    """The rows to mark sent and those that failed. A row confirmed after an earlier row of
    its key (or, unkeyed, of its job) failed counts as failed too (publishers with several
    in flight, AMQP and MQTT, can confirm it): kept, it would reach consumers before the
    earlier one, which is sent again later. A row refused for good blocks nothing: it is
    never sent, so nothing can overtake it."""
    if not result.permanent and len(result.confirmed) == len(rows):
        if all(r.id in result.confirmed for r in rows):  # the usual batch: all went out
            return [r.id for r in rows], []
    confirmed: list[int] = []
    failed: list[OutboxRow] = []
    blocked: set[tuple[str, object]] = set()
    for r in rows:
        # As the claim groups them: by key, else by job; a row of neither stands alone.
        group: tuple[str, object] = (
            ("key", r.key)
            if r.key is not None
            else ("job", r.job_id)
            if r.job_id is not None
            else ("row", r.id)
        )
        if r.id in result.confirmed and group not in blocked:
            confirmed.append(r.id)
        else:
            failed.append(r)
            if r.id not in result.permanent:
                blocked.add(group)
    return confirmed, failed


def build_relays(
    config: Config,
    store: OutboxStore,
    publisher_for: Callable[[str, OutputBase], OutputPublisher],
) -> list[OutboxRelay]:
    """A relay per configured output; ``publisher_for`` (the wiring's: the adapters'
    registry) builds each output's publisher."""
    return [
        OutboxRelay(
            name,
            publisher_for(name, output),
            store,
            batch_size=output.batch_size,
            poll_interval=output.poll_interval,
            publish_timeout=output.publish_timeout,
            max_attempts=output.max_attempts,
        )
        for name, output in config.outputs.items()
    ]
