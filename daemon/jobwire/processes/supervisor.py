"""``jobwire run`` with ``workers.processes`` above 1: N daemons under one process.

systemd and a container see one service: READY=1 once every child is ready, SIGTERM drains
them all, a child that dies is started again with a growing wait. The children are plain
instances sharing the database and the brokers as separate ``jobwire run`` would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import structlog

from jobwire.exit_codes import EXIT_USAGE
from jobwire.processes.handover import ConfigHandover
from jobwire.processes.inbox import NotifyInbox
from jobwire.processes.slot import RestartPolicy, Slot, child_command
from jobwire.sdnotify import sd_notify, watchdog_interval

log = structlog.get_logger("jobwire.processes")

# Drained children give their running jobs workers.shutdown_timeout; stopping the sources,
# relays and pool takes a little longer than that.
_STOP_MARGIN = 30.0


class Supervisor:
    """Starts ``processes`` children running ``argv``; keeps them running until a stop.

    ``command`` starts a child (``argv`` follows it): jobwire by default; ``policy``
    makes each slot's restart policy; ``handover``, the config every child runs, restarted
    ones included (closed when ``run`` returns).
    """

    def __init__(
        self,
        argv: Sequence[str],
        processes: int,
        shutdown_timeout: float,
        environ: Mapping[str, str] = os.environ,
        command: Sequence[str] | None = None,
        policy: Callable[[], RestartPolicy] = RestartPolicy,
        handover: ConfigHandover | None = None,
    ) -> None:
        # How long a draining child may take: its jobs' shutdown_timeout and its teardown.
        self.stop_grace = shutdown_timeout + _STOP_MARGIN
        self.stopping = asyncio.Event()
        self.exit_code = 0
        self.announced = False  # READY=1 sent: every child was ready once
        self._systemd = environ.get("NOTIFY_SOCKET")
        self._watchdog = watchdog_interval(environ)
        env = _child_env(environ)
        if self._watchdog is None:
            env.pop("WATCHDOG_USEC", None)
        self._handover = handover
        fds: tuple[int, ...] = ()
        if handover is not None:
            env.update(handover.env())
            fds = (handover.fd,)
        argv = [*(command if command is not None else child_command()), *argv]
        self.slots = [Slot(i, argv, env, policy(), fds) for i in range(processes)]

    def request_stop(self, reason: str, exit_code: int = 0) -> None:
        """Begin stopping every child (a signal, or a child that cannot run)."""
        if not self.stopping.is_set():
            log.info("stop_requested", reason=reason)
            self.exit_code = exit_code
            self.stopping.set()

    async def run(self) -> int:
        """Run the children until a stop; the exit code for the whole service."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        log.info("worker_processes_starting", processes=len(self.slots), pid=os.getpid())
        inbox = NotifyInbox(len(self.slots), self._on_notify)
        inbox.open(loop)
        for slot in self.slots:
            slot.env["NOTIFY_SOCKET"] = inbox.address(slot.index)
        watchdog = asyncio.create_task(self._watch()) if self._watchdog else None
        try:
            keepers = [asyncio.create_task(self._keep(slot, inbox)) for slot in self.slots]
            await self.stopping.wait()
            await self._stop(keepers)
        finally:
            if watchdog is not None:
                watchdog.cancel()
            inbox.close(loop)
            if self._handover is not None:
                self._handover.close()
        log.info("worker_processes_stopped", exit_code=self.exit_code)
        return self.exit_code

    async def _keep(self, slot: Slot, inbox: NotifyInbox) -> int | None:
        """Keep a process running in ``slot`` until the service stops; the exit code of the
        process the stop ended (None: the stop found none, as in a wait before a restart,
        or this slot's own failure stopped the service and was reported already)."""
        while not self.stopping.is_set():
            previous = slot.pid
            try:
                await slot.start()
            except OSError as exc:  # no interpreter to run, no processes left to fork
                log.error("worker_process_start_failed", process=slot.index, error=str(exc))
                self.request_stop(f"process {slot.index} could not start", 1)
                return None
            if previous is not None:
                slot.restarts += 1
                log.warning(
                    "worker_process_restarted",
                    process=slot.index,
                    pid=slot.pid,
                    previous_pid=previous,
                    restarts=slot.restarts,
                )
            if self.stopping.is_set():  # the stop came while it was being started
                slot.signal(signal.SIGTERM)
            code = await slot.wait()
            inbox.drain(slot.index)  # what it sent before dying is its own, not its successor's
            if self.stopping.is_set():
                return code
            log.error(
                "worker_process_exited",
                process=slot.index,
                pid=slot.pid,
                exit_code=code,
                was_ready=slot.ready,
            )
            # As a single daemon would: a start that fails is the service's failure. A child
            # that exits 2 met a bad config, a taken port or a schema it does not match:
            # starting it again cannot help, so the service stops with that code (systemd's
            # RestartPreventExitStatus=2 then holds).
            if code == EXIT_USAGE or not self.announced:
                self.request_stop(f"process {slot.index} exited {code}", code if code > 0 else 1)
                return None
            delay = slot.policy.died()
            if delay is None:
                log.error(
                    "worker_process_crash_loop", process=slot.index, failures=slot.policy.failures
                )
                self.request_stop(f"process {slot.index} keeps failing", 1)
                return None
            status = f"STATUS=process {slot.index} restarting ({slot.restarts + 1})"
            sd_notify(status, self._systemd)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
        return None

    async def _stop(self, keepers: list[asyncio.Task[int | None]]) -> None:
        """SIGTERM every child and wait for them to drain; SIGKILL what outlives the grace."""
        sd_notify("STOPPING=1", self._systemd)
        for slot in self.slots:
            slot.signal(signal.SIGTERM)
        _, late = await asyncio.wait(keepers, timeout=self.stop_grace)
        if late:
            for slot in self.slots:
                if slot.alive:
                    log.error("worker_process_killed", process=slot.index, pid=slot.pid)
                    slot.kill()
            await asyncio.wait(late)
            self.exit_code = self.exit_code or 1
        for slot, keeper in zip(self.slots, keepers, strict=True):
            code = keeper.result()
            # -SIGTERM: a child still starting (no handler yet, nothing running) that our
            # SIGTERM ended; it stopped as asked.
            if code and code != -signal.SIGTERM:
                log.warning(
                    "worker_process_exited", process=slot.index, pid=slot.pid, exit_code=code
                )
                self.exit_code = self.exit_code or 1

    def _on_notify(self, index: int, sender: int, fields: dict[str, str]) -> None:
        """A child's sd_notify message: readiness, watchdog pings, migration progress,
        its stop. Only the child itself is heard (as systemd's NotifyAccess=main)."""
        slot = self.slots[index]
        if sender != slot.pid:
            return
        if "WATCHDOG" in fields:
            slot.last_ping = time.monotonic()
        if fields.get("STOPPING") == "1":
            # A draining daemon pings no more: the stop's own deadline watches it now.
            slot.ready = False
            slot.stopping_since = time.monotonic()
            return
        if fields.get("READY") == "1" and not slot.ready:
            slot.ready = True
            slot.last_ping = time.monotonic()
            log.info("worker_process_ready", process=index, pid=slot.pid)
            self._announce()
        elif not self.announced and not self.stopping.is_set() and "EXTEND_TIMEOUT_USEC" in fields:
            # A migration running in a child keeps pushing systemd's start timeout ahead;
            # once stopping, it would push the stop's timeout instead.
            sd_notify(f"EXTEND_TIMEOUT_USEC={fields['EXTEND_TIMEOUT_USEC']}", self._systemd)

    def _announce(self) -> None:
        """READY=1 to systemd once every child is ready (once: later restarts are ours)."""
        if self.stopping.is_set():
            return  # a stop was requested: systemd must not see a start succeed after it
        ready = sum(slot.ready for slot in self.slots)
        if self.announced or ready < len(self.slots):
            sd_notify(f"STATUS={ready} of {len(self.slots)} processes ready", self._systemd)
            return
        self.announced = True
        sd_notify(f"READY=1\nSTATUS=running {len(self.slots)} processes", self._systemd)
        log.info("worker_processes_ready", processes=len(self.slots), pid=os.getpid())

    async def _watch(self) -> None:
        """Ping systemd's watchdog; SIGKILL a ready child silent for a whole interval, or one
        stopping on its own for longer than a stop may take (its keeper then starts it
        again, as systemd would have restarted a hung daemon). While the service stops,
        ``_stop``'s deadline alone applies: draining children no longer ping."""
        assert self._watchdog is not None
        while True:
            sd_notify("WATCHDOG=1", self._systemd)
            now = time.monotonic()
            for slot in self.slots:
                if not self.stopping.is_set() and slot.alive and self._hung(slot, now):
                    log.error("worker_process_hung", process=slot.index, pid=slot.pid)
                    slot.kill()
            await asyncio.sleep(self._watchdog / 2)

    def _hung(self, slot: Slot, now: float) -> bool:
        """Silent for a watchdog interval while running, or draining past a stop's time."""
        assert self._watchdog is not None
        if slot.stopping_since is not None:
            return now - slot.stopping_since > self.stop_grace
        return slot.ready and now - slot.last_ping > self._watchdog


def _child_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The children's environment: systemd's notify and watchdog variables are the
    supervisor's own; the supervisor's first import path leads (children run with -P)."""
    env = {k: v for k, v in environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_PID")}
    if sys.path and sys.path[0]:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (sys.path[0], environ.get("PYTHONPATH")) if p
        )
    return env
