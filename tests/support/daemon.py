"""Run the real ``jobwire`` CLI in a subprocess, as an operator would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.support.waiting import wait_sync

REPO = Path(__file__).resolve().parents[2]


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write a YAML config file and return its path.

    Unless the test configures HTTP itself, the daemon's HTTP server takes a free port, so
    that several daemons (and other programs) never fight over 8080.
    """
    data = {"http": {"listen": "127.0.0.1:0"}, **data}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def one_source_config(
    tmp_path: Path, database_url: str, source: dict[str, Any], **workers: Any
) -> Path:
    """``jobwire.yaml`` in tmp_path for a daemon in a subprocess: this database, JSON logs
    (``Daemon`` reads them), one source, and these ``workers`` settings if any."""
    data: dict[str, Any] = {"database": {"url": database_url}, "logging": {"format": "json"}}
    if workers:
        data["workers"] = workers
    return write_config(tmp_path / "jobwire.yaml", {**data, "sources": [source]})


def publish_confirmed(config: Path, source: str, count: int, body: str = '{"x": 1}') -> None:
    """``jobwire publish`` count messages to a source's broker; all must be confirmed."""
    out = jobwire("publish", source, "--body", body, "--count", str(count), "-c", str(config))
    assert out.stdout.strip() == f"published {count}, confirmed {count}"


def jobwire(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run one CLI command to completion."""
    proc = subprocess.run(
        [sys.executable, "-m", "jobwire", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"jobwire {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


class Daemon:
    """``jobwire run`` in the background, its log in a file."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobwire", "run", "-c", str(config)],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )

    def events(self) -> list[dict[str, Any]]:
        """Parsed JSON log lines so far."""
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def has_event(self, name: str) -> bool:
        """Whether a log line with this event name was written."""
        return any(e.get("event") == name for e in self.events())

    def wait_event(self, name: str, timeout: float = 60, **fields: Any) -> None:
        """Block until a log line with this event name (and these field values) appears."""

        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            return any(
                e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
                for e in self.events()
            )

        wait_sync(seen, timeout=timeout, what=f"{name} {fields}")

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until the daemon logged daemon_ready (or died)."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            return self.has_event("daemon_ready")

        wait_sync(ready, timeout=timeout, what="daemon_ready")

    def log(self) -> str:
        """The whole log text."""
        return self.log_path.read_text()

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait for the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no clean-up at all."""
        self.proc.kill()
        self.proc.wait(10)

    def wait(self, timeout: float = 60) -> int:
        """Wait for the process to exit."""
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop_quietly(self) -> None:
        """Make sure the process is gone (test clean-up)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def wait_until(predicate: Any, timeout: float = 60, what: str = "condition") -> Any:
    """Re-export of wait_sync for the acceptance tests."""
    return wait_sync(predicate, timeout=timeout, interval=0.1, what=what)


def now() -> float:
    """Monotonic seconds."""
    return time.monotonic()
