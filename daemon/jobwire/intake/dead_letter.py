"""Invalid messages handed to the broker's dead-letter target; one it could not take is kept
as a failed job instead (never dropped, never looped)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from jobwire.intake.counters import SourceCounters
from jobwire.intake.ports import Settler
from jobwire.intake.writer import BatchWriter
from jobwire.models import Message
from jobwire.routing import Routed
from jobwire.store.base import StoreUnavailable

Requeue = Callable[[Sequence[Message], Exception], Awaitable[None]]

# Dedup keys remembered for a dead-letter target that did not confirm (oldest go first).
_MEMORY = 10_000


class DeadLetters:
    """One source's dead-letter path, for ``on_invalid: dead-letter``."""

    def __init__(
        self,
        enabled: bool,
        writer: BatchWriter,
        settler: Settler,
        counters: SourceCounters,
        log: Any,
        requeue: Requeue,
    ) -> None:
        self._enabled = enabled
        self._writer = writer
        self._settler = settler
        self._counters = counters
        self._log = log
        self._requeue = requeue
        self._failed: dict[str, None] = {}

    def wants(self, message: Message, result: Routed) -> bool:
        """Invalid, the operator chose a dead-letter target, and it has not failed on this
        message before (a redelivery after a failed copy is kept as a failed job)."""
        return (
            result.invalid is not None
            and self._enabled
            and message.reject is not None
            and result.spec.dedup_key not in self._failed
        )

    async def send(self, rejects: Sequence[tuple[Message, Routed]]) -> None:
        """Reject each to the broker's target; keep the ones it could not take."""
        fallback: list[tuple[Message, Routed]] = []
        for message, result in rejects:
            assert message.reject is not None
            try:
                await message.reject(result.invalid)
            except Exception as exc:  # noqa: BLE001 - not confirmed: keep it ourselves
                self._remember_failed(result)
                self._log.warning(
                    "dead_letter_failed",
                    reason=result.invalid,
                    error=f"{type(exc).__name__}: {exc}",
                    note="kept as a failed job",
                )
                fallback.append((message, result))
                continue
            self._counters.dead_lettered += 1
            self._counters.add_poison(result.kind)
            self._log.warning("message_dead_lettered", reason=result.invalid)
        if fallback:
            await self._keep(fallback)

    async def _keep(self, fallback: Sequence[tuple[Message, Routed]]) -> None:
        messages = [m for m, _ in fallback]
        try:
            await self._writer.write([r for _, r in fallback], [m.body for m in messages])
        except StoreUnavailable as exc:
            await self._requeue(messages, exc)
            return
        for message, result in fallback:
            self._counters.note_stored(self._log, message, result)
        await self._settler.ack_many(messages)
        self._counters.acked += len(messages)

    def _remember_failed(self, result: Routed) -> None:
        # The broker still has the message (the adapter ended its channel or connection, so
        # the fallback's ack may not reach it) and redelivers it: remembered, the copy is
        # then kept as a failed job at once, its dedup key absorbing this one's row,
        # instead of trying a target that fails again and again.
        if result.spec.dedup_key is None:
            return
        self._failed[result.spec.dedup_key] = None
        while len(self._failed) > _MEMORY:
            del self._failed[next(iter(self._failed))]
