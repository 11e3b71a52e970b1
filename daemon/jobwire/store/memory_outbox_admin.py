"""The operator's side of the outbox in memory: the same contract as PostgreSQL's."""

from __future__ import annotations

from collections.abc import Sequence

from jobwire.store.base import SetAsideMessage
from jobwire.store.memory_base import MemoryState


class MemoryOutboxAdmin(MemoryState):
    """Set-aside outbox messages for operators, on the memory store."""

    def _set_aside(self, output: str | None, ids: Sequence[int] | None) -> list[int]:
        wanted = None if ids is None else set(ids)
        return [
            r.id
            for r in self.outbox
            if r.failed_at is not None
            and r.sent_at is None
            and (output is None or r.output == output)
            and (wanted is None or r.id in wanted)
        ]

    async def set_aside_messages(
        self, output: str | None, limit: int, before_id: int | None = None
    ) -> list[SetAsideMessage]:
        """Set-aside messages, newest first (of ``output``, or all), a page at a time."""
        await self.ping()
        found = set(self._set_aside(output, None))
        rows = [
            r
            for r in reversed(self.outbox)
            if r.id in found and (before_id is None or r.id < before_id)
        ]
        return [
            SetAsideMessage(
                r.id,
                r.output,
                r.job_id,
                r.n,
                r.key,
                r.attempts,
                r.last_error,
                r.created_at,
                r.failed_at,
                len(r.body),
            )
            for r in rows[:limit]
        ]

    async def resend_set_aside(self, output: str, ids: Sequence[int] | None = None) -> list[int]:
        """Hand set-aside messages back to the relay, attempts from zero; their ids."""
        await self.ping()
        chosen = set(self._set_aside(output, ids))
        for r in self.outbox:
            if r.id in chosen:
                r.failed_at, r.attempts = None, 0
        return sorted(chosen)

    async def discard_set_aside(self, output: str, ids: Sequence[int] | None = None) -> list[int]:
        """Delete set-aside messages; their ids."""
        await self.ping()
        chosen = set(self._set_aside(output, ids))
        self.outbox[:] = [r for r in self.outbox if r.id not in chosen]
        return sorted(chosen)
