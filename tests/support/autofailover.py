"""A pg_auto_failover cluster for drills: a monitor, a primary and a synchronous secondary.

Debian's ``postgresql-15-auto-failover`` (``pg_autoctl``), each node in its own data
directory on a free port, run as the postgres user (PostgreSQL refuses root). The cluster
keeps its files, pg_autoctl's config and state included, in one temporary directory that
``stop`` removes; its processes are ours and are ended by pid.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.processes import free_port

BIN = Path("/usr/lib/postgresql/15/bin")


def available() -> str | None:
    """Why a cluster cannot run here, or None when it can."""
    if shutil.which("pg_autoctl") is None:
        return "no pg_autoctl (apt-get install postgresql-15-auto-failover)"
    if not (BIN / "postgres").exists():
        return f"no PostgreSQL 15 binaries in {BIN}"
    if os.geteuid() != 0 and shutil.which("runuser") is None:
        return "needs root to run pg_autoctl as the postgres user"
    return None


class AutoFailoverCluster:
    """``start()`` brings up monitor, node1 (primary) and node2 (secondary)."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="jw-paf-"))
        shutil.chown(self.base, "postgres", "postgres")
        self.monitor_port, *self.node_ports = (free_port() for _ in range(3))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # --- running pg_autoctl as postgres ---------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {
            "PATH": f"{BIN}:/usr/bin:/bin",
            "HOME": str(self.base),
            "XDG_CONFIG_HOME": str(self.base / "config"),
            "XDG_DATA_HOME": str(self.base / "data"),
            "PG_AUTOCTL_DEBUG": "0",
        }

    def _argv(self, *args: str) -> list[str]:
        env = [f"{k}={v}" for k, v in self._env().items()]
        return ["runuser", "-u", "postgres", "--", "env", *env, "pg_autoctl", *args]

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """Run one pg_autoctl command to its end; its output."""
        done = subprocess.run(
            self._argv(*args), capture_output=True, timeout=timeout, check=False, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_autoctl {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def _spawn(self, name: str, *args: str) -> None:
        with (self.base / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                self._argv(*args), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    @property
    def monitor_uri(self) -> str:
        """The monitor's connection string."""
        return (
            f"postgres://autoctl_node@127.0.0.1:{self.monitor_port}/pg_auto_failover"
            "?sslmode=disable"
        )

    def url(self, database: str = "postgres") -> str:
        """What an application connects with: every node, the writable one wanted."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.node_ports)
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"

    # --- life ------------------------------------------------------------------------------

    def start(self, timeout: float = 180) -> AutoFailoverCluster:
        """Create and run the monitor and both nodes; wait for primary + secondary."""
        common = ("--auth", "trust", "--no-ssl", "--hostname", "127.0.0.1", "--run")
        self._spawn(
            "monitor",
            *("create", "monitor", "--pgdata", str(self.base / "monitor")),
            *("--pgport", str(self.monitor_port), *common),
        )
        self._wait(lambda: self._monitor_up(), timeout, "the monitor")
        for index, port in enumerate(self.node_ports, start=1):
            self._spawn(
                f"node{index}",
                *("create", "postgres", "--pgdata", str(self.base / f"node{index}")),
                *("--pgport", str(port), "--monitor", self.monitor_uri),
                *("--name", f"node{index}", *common),
            )
            self._wait(lambda n=index: self._settled(n), timeout, f"node{index}")
        return self

    def _monitor_up(self) -> bool:
        try:
            self.ctl("show", "uri", "--pgdata", str(self.base / "monitor"), timeout=10)
        except (RuntimeError, subprocess.TimeoutExpired):
            return False
        return True

    def state(self) -> list[dict[str, Any]]:
        """The monitor's view: one entry per node (``pg_autoctl show state --json``)."""
        out = self.ctl("show", "state", "--pgdata", str(self.base / "monitor"), "--json")
        return list(json.loads(out))

    def primary(self) -> str | None:
        """The node both reported and assigned primary, with a secondary beside it."""
        try:
            nodes = self.state()
        except (RuntimeError, ValueError, subprocess.TimeoutExpired):
            return None
        states = {(n["current_group_state"], n["assigned_group_state"]) for n in nodes}
        primaries = [n["nodename"] for n in nodes if n["current_group_state"] == "primary"]
        if len(nodes) == 2 and states != {("primary", "primary"), ("secondary", "secondary")}:
            return None
        return primaries[0] if len(primaries) == 1 else None

    def _settled(self, nodes: int) -> bool:
        try:
            found = self.state()
        except (RuntimeError, ValueError, subprocess.TimeoutExpired):
            return False
        if len(found) != nodes:
            return False
        wanted = {"single"} if nodes == 1 else {"primary", "secondary"}
        return {n["current_group_state"] for n in found} == wanted and all(
            n["current_group_state"] == n["assigned_group_state"] for n in found
        )

    def failover(self) -> float:
        """``pg_autoctl perform failover``; returns once the new primary is settled, with
        the seconds it took."""
        began = time.monotonic()
        before = self.primary()
        self.ctl("perform", "failover", "--pgdata", str(self.base / "monitor"), timeout=180)
        self._wait(lambda: self.primary() not in (None, before), 120, "a new primary")
        return time.monotonic() - began

    @staticmethod
    def _wait(check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.5)
        raise RuntimeError(f"pg_auto_failover: {what} not ready within {timeout:.0f}s")

    def stop(self) -> None:
        """Stop the nodes, then the monitor (our processes, by pid), and remove the files."""
        for name in [n for n in self.procs if n != "monitor"] + ["monitor"]:
            proc = self.procs.get(name)
            if proc is None:
                continue
            if proc.poll() is None:
                # SIGTERM to runuser is passed on to pg_autoctl, which stops its postgres.
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        self.procs.clear()
        shutil.rmtree(self.base, ignore_errors=True)
