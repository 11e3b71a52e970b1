"""The built-in handlers as one daemon service: made for the kinds the config names, the
``http`` session opened at start and closed at stop."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from jobwire.builtins.email import EmailSend
from jobwire.builtins.http import HttpCall
from jobwire.builtins.maintenance import DbMaintenance
from jobwire.builtins.settings import BuiltinsConfig
from jobwire.store.base import MaintenanceStore

Handler = Callable[..., Any]


class BuiltinHandlers:
    """The configured built-ins; ``handler(kind)`` gives each to the HandlerRegistry."""

    name = "builtins"

    def __init__(
        self, cfg: BuiltinsConfig, store: MaintenanceStore, kinds: Collection[str]
    ) -> None:
        self._http: HttpCall | None = None
        self._handlers: dict[str, HttpCall | EmailSend | DbMaintenance] = {}
        # The config refuses builtin:http and builtin:email without their sections.
        if "http" in kinds and cfg.http is not None:
            self._http = self._handlers["http"] = HttpCall(cfg.http)
        if "email" in kinds and cfg.email is not None:
            self._handlers["email"] = EmailSend(cfg.email)
        if "db_maintenance" in kinds:
            self._handlers["db_maintenance"] = DbMaintenance(cfg.db_maintenance, store)

    def handler(self, kind: str) -> Handler:
        """The running built-in of ``kind`` (its bound ``__call__``: a coroutine function, so
        the registry awaits it on the loop rather than on a handler thread)."""
        if kind not in self._handlers:
            raise ValueError(f"built-in {kind!r} is not configured (builtins.{kind})")
        return self._handlers[kind].__call__

    async def start(self) -> None:
        """Open what the built-ins keep open (the http session)."""
        if self._http is not None:
            await self._http.start()

    async def stop(self) -> None:
        """Close it."""
        if self._http is not None:
            await self._http.close()
