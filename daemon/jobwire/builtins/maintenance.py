"""The ``db_maintenance`` built-in: VACUUM and ANALYZE of jobwire's own tables, for a
schedule. Payload (all optional): ``{"vacuum": true, "analyze": true, "tables": [...]}``."""

from __future__ import annotations

import time
from typing import Any

from jobwire.builtins.settings import MaintenanceBuiltinConfig
from jobwire.exceptions import Reject
from jobwire.handlers import JobContext
from jobwire.store.base import MaintenanceStore


class DbMaintenance:
    """The handler: the store does the work (the SQL lives there)."""

    def __init__(self, cfg: MaintenanceBuiltinConfig, store: MaintenanceStore) -> None:
        self.cfg = cfg
        self.store = store

    async def __call__(self, payload: Any, ctx: JobContext) -> dict[str, Any]:
        """VACUUM and/or ANALYZE the tables; returns which, and how long it took."""
        payload = {} if payload is None else payload
        if not isinstance(payload, dict):
            raise Reject('db_maintenance takes an object payload: {"vacuum", "analyze", "tables"}')
        vacuum, analyze = payload.get("vacuum", True), payload.get("analyze", True)
        if not isinstance(vacuum, bool) or not isinstance(analyze, bool):
            raise Reject("vacuum and analyze must be true or false")
        if not (vacuum or analyze):
            raise Reject("nothing to do: vacuum and analyze are both false")
        tables = payload.get("tables")
        if tables is not None and (
            not isinstance(tables, list) or not all(isinstance(t, str) for t in tables)
        ):
            raise Reject("tables must be a list of table names")
        started = time.monotonic()
        try:
            done = await self.store.maintain_tables(
                tables, vacuum=vacuum, analyze=analyze, timeout=self.cfg.statement_timeout
            )
        except ValueError as exc:
            raise Reject(str(exc)) from None
        return {
            "tables": done,
            "vacuum": vacuum,
            "analyze": analyze,
            "seconds": round(time.monotonic() - started, 3),
        }
