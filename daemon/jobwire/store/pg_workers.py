"""The instances' rows on PostgreSQL: each running daemon's heartbeat and what it publishes
of itself (counters, sources, outputs, what it serves and consumes)."""

from __future__ import annotations

from typing import Any

from jobwire.store.pg_base import PgBase, guard


class PgWorkers(PgBase):
    """Register, heartbeat and unregister this instance; read the others."""

    async def register_worker(
        self,
        worker_id: str,
        host: str,
        pid: int,
        version: str,
        state: dict[str, Any] | None = None,
    ) -> None:
        """Insert this instance's row."""
        async with guard("register worker"):
            await self._pool.execute(
                self._q["register_worker"], worker_id, host, pid, version, state or {}
            )

    async def heartbeat_worker(self, worker_id: str, state: dict[str, Any]) -> None:
        """Refresh this instance's heartbeat."""
        async with guard("worker heartbeat"):
            # The connection's jsonb codec serialises the dict itself.
            await self._pool.execute(self._q["heartbeat_worker"], worker_id, state)

    async def other_workers(self, worker_id: str, within: float) -> list[dict[str, Any]]:
        """The state of each other instance with a heartbeat in the last ``within`` seconds."""
        async with guard("read workers"):
            rows = await self._pool.fetch(self._q["other_workers"], worker_id, within)
        # The column holds any JSON: a row whose state is not an object says nothing.
        return [dict(r["state"]) if isinstance(r["state"], dict) else {} for r in rows]

    async def unregister_worker(self, worker_id: str) -> None:
        """Delete this instance's row."""
        async with guard("unregister worker"):
            await self._pool.execute(self._q["unregister_worker"], worker_id)
