"""Failpoints for drills: ``JOBWIRE_FAILPOINT=name`` kills the process when it reaches ``name``."""

from __future__ import annotations

import os
import signal

_ACTIVE = os.environ.get("JOBWIRE_FAILPOINT", "")


def hit(name: str) -> None:
    """SIGKILL this process if the named failpoint is switched on (tests only)."""
    if _ACTIVE and _ACTIVE == name:
        os.kill(os.getpid(), signal.SIGKILL)
