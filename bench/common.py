"""Shared pieces of the benchmarks: a fresh database, a daemon in a subprocess, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import yaml

REPO = Path(__file__).resolve().parents[1]
SERVER = os.environ.get("JOBWIRE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP = "amqp://guest:guest@127.0.0.1:5672/"


@contextlib.asynccontextmanager
async def fresh_database(prefix: str = "jwbench") -> AsyncIterator[str]:
    """A new empty database on the benchmark server, dropped afterwards; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(SERVER)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield SERVER.rpartition("/")[0] + "/" + name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.contextmanager
def daemon(config: dict[str, Any]) -> Iterator[subprocess.Popen[bytes]]:
    """``jobwire run`` with this config in a subprocess; SIGTERM on exit."""
    config = {"logging": {"format": "json", "level": "warning"}, **config}
    config.setdefault("http", {"listen": "127.0.0.1:0"})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jobwire.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobwire", "run", "-c", str(path)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
        )
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


async def until(
    probe: Callable[[], Awaitable[bool]],
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll ``probe`` every 50 ms until true; fail after ``timeout`` or if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while not await probe():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done within {timeout}s")
        await asyncio.sleep(0.05)


async def fetchval(url: str, sql: str) -> Any:
    """One value from a fresh connection."""
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()
