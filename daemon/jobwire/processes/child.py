"""The child's side of ``workers.processes``: which process it is, its own identities, and
dying with its supervisor."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import structlog

from jobwire.adapters.http.config import HttpSource
from jobwire.adapters.mqtt.config import (
    MqttOutput,
    MqttSource,
    default_client_id,
    default_output_client_id,
)
from jobwire.config import Config

INDEX_ENV = "JOBWIRE_PROCESS_INDEX"
SUPERVISOR_ENV = "JOBWIRE_SUPERVISOR_PID"

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class SupervisorGone(Exception):
    """The supervisor that started this child is no longer its parent."""


@dataclass(frozen=True)
class ChildRole:
    """A daemon started by a supervisor: process ``index`` of the service (0 serves HTTP)."""

    index: int
    supervisor_pid: int

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] = os.environ) -> ChildRole | None:
        """The role the supervisor gave this process, or None for a daemon on its own; its
        variables are taken out of ``environ``, so that a ``jobwire run`` a handler starts
        is a daemon on its own, not a child of a supervisor that never started it."""
        index, parent = environ.pop(INDEX_ENV, None), environ.pop(SUPERVISOR_ENV, None)
        if index is None or parent is None:
            return None
        return cls(int(index), int(parent))

    def env(self) -> dict[str, str]:
        """The environment variables that give a child this role."""
        return {INDEX_ENV: str(self.index), SUPERVISOR_ENV: str(self.supervisor_pid)}

    def attach(self) -> None:
        """Stop when the supervisor dies, and say which process each log line comes from.

        SIGTERM rather than SIGKILL: a child left without its supervisor drains as on any
        stop (running jobs get workers.shutdown_timeout, the rest are given back).
        """
        _set_parent_death_signal(signal.SIGTERM)
        # The supervisor may have died before the line above: then the signal never comes.
        if os.getppid() != self.supervisor_pid:
            raise SupervisorGone(f"supervisor {self.supervisor_pid} is gone")
        structlog.contextvars.bind_contextvars(process=self.index)

    def config(self, config: Config) -> Config:
        """This process's config: process 0 as configured; the others without the HTTP
        server (and the webhook sources it carries), with MQTT client ids of their own."""
        if self.index == 0:
            return config
        suffix = f"-{self.index}"
        sources = [
            _with_client_id(s, s.client_id or default_client_id(s.name), suffix)
            if isinstance(s, MqttSource)
            else s
            for s in config.sources
            if not isinstance(s, HttpSource)
        ]
        outputs = {
            name: _with_client_id(o, o.client_id or default_output_client_id(name), suffix)
            if isinstance(o, MqttOutput)
            else o
            for name, o in config.outputs.items()
        }
        http = config.http.model_copy(update={"enabled": False})
        return config.model_copy(update={"sources": sources, "outputs": outputs, "http": http})


def _with_client_id(cfg: Any, base: str, suffix: str) -> Any:
    # MQTT allows 128 characters here (jobwire's limit too); the suffix must survive.
    return cfg.model_copy(update={"client_id": base[: 128 - len(suffix)] + suffix})


def _set_parent_death_signal(sig: int) -> None:
    """prctl(PR_SET_PDEATHSIG): this signal when the parent exits (Linux; elsewhere nothing)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return
    if prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
