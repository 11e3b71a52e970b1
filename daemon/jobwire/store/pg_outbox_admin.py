"""The operator's side of the outbox on PostgreSQL: messages set aside, listed, sent again
or discarded."""

from __future__ import annotations

from collections.abc import Sequence

from jobwire.store.base import SetAsideMessage
from jobwire.store.pg_base import PgBase, guard


class PgOutboxAdmin(PgBase):
    """Set-aside outbox messages for operators (CLI, API, dashboard)."""

    async def set_aside_messages(
        self, output: str | None, limit: int, before_id: int | None = None
    ) -> list[SetAsideMessage]:
        """Set-aside messages, newest first (of ``output``, or all), a page at a time."""
        async with guard("outbox set aside"):
            rows = await self._pool.fetch(self._q["outbox_set_aside"], output, limit, before_id)
        return [
            SetAsideMessage(
                r["id"],
                r["output"],
                r["job_id"],
                r["n"],
                r["key"],
                r["attempts"],
                r["last_error"],
                r["created_at"],
                r["failed_at"],
                r["size"],
            )
            for r in rows
        ]

    async def resend_set_aside(self, output: str, ids: Sequence[int] | None = None) -> list[int]:
        """Hand set-aside messages back to the relay, attempts from zero; their ids."""
        async with guard("outbox resend"):
            rows = await self._pool.fetch(
                self._q["outbox_resend_set_aside"], output, None if ids is None else list(ids)
            )
        return sorted(r["id"] for r in rows)

    async def discard_set_aside(self, output: str, ids: Sequence[int] | None = None) -> list[int]:
        """Delete set-aside messages; their ids."""
        async with guard("outbox discard"):
            rows = await self._pool.fetch(
                self._q["outbox_discard_set_aside"], output, None if ids is None else list(ids)
            )
        return sorted(r["id"] for r in rows)
