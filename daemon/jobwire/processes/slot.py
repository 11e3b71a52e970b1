"""One child daemon process of the supervisor: started, watched, restarted in its slot."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from jobwire.backoff import Backoff
from jobwire.processes.child import ChildRole


def child_command() -> list[str]:
    """How a child is started: this interpreter running jobwire.

    ``-P``: no working directory (the service's writable data directory) on ``sys.path``;
    the supervisor's own first entry is passed as ``PYTHONPATH`` instead (see ``Slot``), so
    a child imports handlers exactly as its supervisor does.
    """
    return [sys.executable, "-P", "-m", "jobwire"]


class RestartPolicy:
    """When to start a child again after it died, and when to give up: ``limit`` deaths in
    a row, none after a run of at least ``stable_after`` seconds, is a crash loop that
    restarting the whole service (systemd's Restart= and StartLimit) handles better."""

    def __init__(
        self,
        limit: int = 5,
        stable_after: float = 60.0,
        first_wait: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.stable_after = stable_after
        self.clock = clock
        self.failures = 0  # deaths in a row, each after a short run
        self.backoff = Backoff(initial=first_wait, maximum=30.0)
        self._started_at = clock()

    def started(self) -> None:
        """A process was started in the slot."""
        self._started_at = self.clock()

    def died(self) -> float | None:
        """It died: the wait before the next start, or None to give up."""
        if self.clock() - self._started_at >= self.stable_after:
            self.failures = 0
            self.backoff.reset()
        self.failures += 1
        if self.failures >= self.limit:
            return None
        return self.backoff.next()


class Slot:
    """Process ``index`` of the service: its current process, its readiness and its restarts."""

    def __init__(
        self,
        index: int,
        command: Sequence[str],
        env: Mapping[str, str],
        policy: RestartPolicy | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.index = index
        self.command = list(command)
        self.env = dict(env)
        self.pass_fds = tuple(pass_fds)  # inherited by every process started here
        self.policy = policy or RestartPolicy()
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = False
        self.stopping_since: float | None = None  # it sent STOPPING=1: draining
        self.last_ping = 0.0
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        """The current process's pid (None before the first start)."""
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        """Whether the current process has not exited yet."""
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        """Start a new process in this slot (the same ``jobwire run``, marked as this child)."""
        # Before the await: the watchdog must not judge the new process by the old one's state.
        self.ready = False
        self.stopping_since = None
        env = {**self.env, **ChildRole(self.index, os.getpid()).env()}
        self.proc = await asyncio.create_subprocess_exec(
            *self.command, env=env, stdin=subprocess.DEVNULL, pass_fds=self.pass_fds
        )
        self.last_ping = time.monotonic()
        self.policy.started()

    async def wait(self) -> int:
        """Wait for the current process to exit; its exit code (negative: killed by a signal)."""
        assert self.proc is not None
        return await self.proc.wait()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the current process if it is still running."""
        if self.alive:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the current process."""
        self.signal(signal.SIGKILL)
