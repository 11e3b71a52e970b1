"""Shared pieces of the benchmarks: a fresh database, a daemon in a subprocess, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psutil
import uvloop
import yaml

from bench import pgstats
from jobwire import gc_tuning
from jobwire.store.postgres import migrate

REPO = Path(__file__).resolve().parents[1]
SERVER = os.environ.get("JOBWIRE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP = "amqp://guest:guest@127.0.0.1:5672/"


T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a benchmark on uvloop, the loop ``jobwire run`` uses: every asyncio contender here
    (the bare aio-pika and asyncpg ceilings, PgQueuer, Procrastinate) gets the same loop as
    jobwire, so no ratio comes from the loop alone (uvloop lifts the bare consumer ~7%). They
    get its garbage collector's settings too (jobwire.gc_tuning), for the same reason."""
    gc_tuning.settle_before_start()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


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
def daemon(
    config: dict[str, Any], log_path: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``jobwire run`` with this config in a subprocess (its JSON log in ``log_path`` if
    given, at info level); SIGTERM on exit."""
    level = "info" if log_path else "warning"
    config = {"logging": {"format": "json", "level": level}, **config}
    config.setdefault("http", {"listen": "127.0.0.1:0"})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jobwire.yaml"
        path.write_text(yaml.safe_dump(config))
        log = log_path.open("w") if log_path else None
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobwire", "run", "-c", str(path)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
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
            if log is not None:
                log.close()


async def until(
    probe: Callable[[], Awaitable[bool]],
    timeout: float,
    *procs: subprocess.Popen[bytes] | None,
) -> None:
    """Poll ``probe`` every 50 ms until true; fail after ``timeout`` or if a process of
    ``procs`` exits."""
    deadline = time.monotonic() + timeout
    while not await probe():
        for proc in procs:
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


class JobsWatch:
    """A drain's progress, read on one connection with statements that stay cheap.

    The bench polls while the daemon works on the same two cores, so its polling is taken
    from jobwire's figures: a new connection and a count over the whole table cost the
    machine 15 ms of CPU per poll at 20,000 rows (a quarter of a core at 50 ms intervals);
    on one connection the count alone still cost 3.5 ms. Here a poll reads the identity's
    last value and two partial indexes, and counts only once nothing is left to run.
    """

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.polls = 0  # statements sent, each its own transaction: off the write counts

    async def _value(self, sql: str) -> Any:
        self.polls += 1
        return await self.conn.fetchval(sql)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str) -> AsyncIterator[JobsWatch]:
        """A watch on the jobwire schema at ``url`` (migrated), closed afterwards."""
        conn = await asyncpg.connect(url)
        try:
            yield cls(conn)
        finally:
            await conn.close()

    async def any_rows(self) -> bool:
        """Whether a job row exists."""
        return bool(await self._value("SELECT EXISTS (SELECT 1 FROM jobwire.jobs)"))

    async def none_left(self) -> bool:
        """Whether no job is pending, retrying or running (each through its partial index)."""
        return not await self._value(
            "SELECT EXISTS (SELECT 1 FROM jobwire.jobs WHERE status IN ('pending', 'retrying'))"
            " OR EXISTS (SELECT 1 FROM jobwire.jobs WHERE status = 'running')"
        )

    async def succeeded_at_least(self, n: int) -> bool:
        """Whether n jobs have succeeded."""
        # Rows never outnumber the ids handed out, so below n there is nothing to count.
        issued = await self._value(
            "SELECT coalesce(pg_sequence_last_value("
            "pg_get_serial_sequence('jobwire.jobs', 'id')::regclass), 0)"
        )
        if issued < n or not await self.none_left():
            return False
        done = await self._value("SELECT count(*) FROM jobwire.jobs WHERE status = 'succeeded'")
        return int(done) >= n


async def fill_month_of_history(url: str, rows: int, failed_every: int = 0) -> None:
    """A migrated jobwire schema as a month of service leaves it: a few old live jobs (500
    pending in a queue no instance serves, 3 running for an hour), then ``rows`` finished
    jobs whose finish times are spread over 30 days in random physical order (a purged
    table reuses its space), one in every ``failed_every`` failed (none for 0)."""
    conn = await asyncpg.connect(url, server_settings={"search_path": "jobwire"})
    try:
        await conn.execute(
            "INSERT INTO jobs (handler, queue) SELECT 'noop', 'unserved'"
            " FROM generate_series(1, 500)"
        )
        await conn.execute(
            "INSERT INTO jobs (handler, status, attempts, worker_id, lease_until, started_at)"
            " SELECT 'slow', 'running', 1, 'w', now() + interval '1 hour', now()"
            " FROM generate_series(1, 3)"
        )
        await conn.execute(
            "INSERT INTO jobs (handler, status, attempts, finished_at, payload)"
            " SELECT 'noop', CASE WHEN $2 > 0 AND g % $2 = 0 THEN 'failed' ELSE 'succeeded'"
            " END, 1, now() - random() * interval '30 days', '{}'"
            " FROM generate_series(1, $1) AS g",
            rows,
            failed_every,
        )
        await conn.execute("VACUUM ANALYZE jobs")  # statistics as autovacuum leaves them
        await conn.execute("CHECKPOINT")  # the fill's writes are not flushed during timing
    finally:
        await conn.close()


@dataclass
class Drain:
    """Figures of one source drained to succeeded jobs, taken from the rows."""

    jobs: int
    distinct_keys: int
    intake_seconds: float  # first row stored -> last row stored
    total_seconds: float  # first row stored -> last job finished
    reruns: int
    pool: dict[str, Any]  # the daemon's pool_stopped counters
    # Per second from the first row stored: (rows stored, jobs finished) in that second.
    timeline: list[tuple[int, int]]
    # The daemon's CPU time (user + system) from its first row to its last job, per job:
    # steadier than the rate when the machine's speed drifts, and what the daemon costs.
    cpu_us_per_job: float = 0.0
    # The whole machine's busy CPU time (all processes: PostgreSQL, the broker, the kernel)
    # over the same span, per job: on two cores the daemon shares them with both.
    machine_cpu_us_per_job: float = 0.0
    # The same span's CPU time per job by who spent it: the daemon, PostgreSQL (every
    # backend and its helpers), the broker, this bench process, and the rest (the kernel's
    # interrupts, other programs).
    cpu_us_by_part: dict[str, float] = field(default_factory=dict)
    # What the drain wrote to PostgreSQL per job (None where not taken).
    writes: pgstats.WritesPerJob | None = None
    # Jobs per second from the moment every daemon had started a job (see steady_rate).
    steady_rate: float = 0.0

    @property
    def rate(self) -> float:
        """Jobs per second, first stored to last finished."""
        return self.jobs / self.total_seconds

    def report(self, ceiling_seconds: float | None = None) -> None:
        """Print the figures (and the ratio to a ceiling that did the same N)."""
        print(
            f"jobwire intake only (first -> last row stored): {self.intake_seconds:.2f}s = "
            f"{self.jobs / self.intake_seconds:,.0f} msg/s"
        )
        print(
            f"jobwire drain to all succeeded: {self.jobs} jobs in {self.total_seconds:.2f}s = "
            f"{self.rate:,.0f} jobs/s"
        )
        if ceiling_seconds:
            print(f"ratio jobwire / ceiling: {ceiling_seconds / self.total_seconds:.0%}")
        print(
            f"CPU per job (first row -> last job): daemon {self.cpu_us_per_job:.1f} us, "
            f"whole machine {self.machine_cpu_us_per_job:.1f} us"
        )
        if self.cpu_us_by_part:
            print(
                "CPU per job by part: "
                + ", ".join(f"{part} {us:.1f} us" for part, us in self.cpu_us_by_part.items())
            )
        print(f"distinct dedup keys: {self.distinct_keys}; jobs run more than once: {self.reruns}")
        if self.writes is not None:
            print(f"writes per job: {self.writes.line()}")
        print("per second, stored/finished: " + " ".join(f"{i}/{f}" for i, f in self.timeline))
        if self.pool:
            p = self.pool
            print(
                f"pool: {p['direct']} jobs handed over by the intake, {p['claimed']} claimed "
                f"in {p['claims']} claims, {p['completion_batches']} completion batches"
            )


async def drain_source(
    source: dict[str, Any],
    n: int,
    concurrency: int | None = 256,
    profile: str | None = None,
    daemons: int = 1,
    processes: int = 1,
) -> Drain:
    """Run the daemon on a fresh database with this one source until n jobs succeeded.

    ``concurrency``: None leaves the daemon's default. ``daemons``: that many ``jobwire
    run`` processes on the one database and source (CPU figures are their sum).
    ``processes``: each daemon's ``workers.processes`` (its children's CPU is not in the
    daemon figures: use the rates).
    ``profile``: py-spy the (first) daemon for 10 s from its first row, raw stacks to this
    file; only with one process (with several, the daemon is a supervisor that runs no jobs).
    """
    if profile and processes > 1:
        raise ValueError("profile needs processes=1: a supervisor's stacks show no jobs")
    async with fresh_database() as url:
        await migrate(url, "jobwire")
        workers: dict[str, Any] = {} if concurrency is None else {"concurrency": concurrency}
        if processes > 1:
            workers["processes"] = processes
        config = {
            "database": {"url": url},
            "workers": workers,
            "sources": [{"name": "bench", "route": {"handler": "noop"}, **source}],
        }
        async with pgstats.Counting.open(url) as counting:
            with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
                logs = [Path(tmp) / f"daemon{i}.log" for i in range(daemons)]
                procs = [stack.enter_context(daemon(config, log)) for log in logs]
                spy = None
                cpus = [psutil.Process(proc.pid) for proc in procs]
                async with JobsWatch.open(url) as watch:
                    await until(watch.any_rows, 120, *procs)
                    if profile:
                        # From the first row: the start-up's imports are not the drain.
                        spy = subprocess.Popen(
                            [
                                *(_py_spy(), "record", "--pid", str(procs[0].pid)),
                                *("--duration", "10", "--rate", "200"),
                                *("--format", "raw", "-o", profile),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    cpu_start, machine_start = _cpu_seconds(*cpus), _machine_busy_seconds()
                    parts_start = _cpu_seconds_by_part(procs)
                    await until(lambda: watch.succeeded_at_least(n), 900, *procs)
                    cpu_used = _cpu_seconds(*cpus) - cpu_start
                    machine_used = _machine_busy_seconds() - machine_start
                    parts_end = _cpu_seconds_by_part(procs)
                    polls = watch.polls
                if spy is not None:
                    spy.wait(60)
                stack.close()  # the daemons stop and write their pool_stopped lines
                stopped = [
                    json.loads(line)
                    for log in logs
                    for line in log.read_text().splitlines()
                    if '"pool_stopped"' in line
                ]
            writes = await counting.per_job(n, polls)
        conn = await asyncpg.connect(url)
        try:
            row = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT dedup_key) AS d,"
                " extract(epoch FROM max(created_at) - min(created_at)) AS intake,"
                " extract(epoch FROM max(finished_at) - min(created_at)) AS total,"
                " count(*) FILTER (WHERE attempts > 1) AS reruns"
                " FROM jobwire.jobs"
            )
            seconds = await conn.fetch(
                "WITH t AS (SELECT created_at, finished_at, min(created_at) OVER () AS t0"
                " FROM jobwire.jobs), s AS ("
                " SELECT floor(extract(epoch FROM created_at - t0))::int AS sec, 1 AS i, 0 AS f"
                " FROM t UNION ALL"
                " SELECT floor(extract(epoch FROM finished_at - t0))::int, 0, 1 FROM t)"
                " SELECT sec, sum(i)::int AS i, sum(f)::int AS f FROM s GROUP BY sec ORDER BY sec"
            )
            steady = await steady_rate(conn)
        finally:
            await conn.close()
    return Drain(
        row["n"],
        row["d"],
        float(row["intake"]),
        float(row["total"]),
        row["reruns"],
        _summed(stopped),
        [(r["i"], r["f"]) for r in seconds],
        cpu_used * 1e6 / row["n"],
        machine_used * 1e6 / row["n"],
        _parts_per_job(parts_start, parts_end, machine_used, row["n"]),
        writes,
        steady,
    )


async def steady_rate(conn: asyncpg.Connection) -> float:
    """Jobs finished per second from the moment every daemon (worker id) had started its
    first job to the last finish: daemons started together still come up a fraction of a
    second apart, which in a short drain the first one would otherwise count as its own."""
    row = await conn.fetchrow(
        "WITH t AS (SELECT max(first) AS t_all FROM"
        " (SELECT min(started_at) AS first FROM jobwire.job_runs GROUP BY worker_id) AS f)"
        " SELECT count(*) FILTER (WHERE r.finished_at >= t.t_all) AS done,"
        " extract(epoch FROM max(r.finished_at) - t.t_all) AS span"
        " FROM jobwire.job_runs AS r, t GROUP BY t.t_all"
    )
    span = float(row["span"] or 0.0)
    return int(row["done"]) / span if span > 0 else 0.0


def _summed(stopped: list[dict[str, Any]]) -> dict[str, Any]:
    """The pool counters of every daemon, added up (one daemon: its own line)."""
    total: dict[str, Any] = {}
    for line in stopped:
        for key, value in line.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
            else:
                total.setdefault(key, value)
    return total


def _py_spy() -> str:
    # Installed by the bench extra next to this interpreter; the venv need not be on PATH.
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else "py-spy"


def _machine_busy_seconds() -> float:
    # Linux: guest time is inside user; idle, iowait and steal are not this machine's work.
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


# Process names of each part (psutil's name(): the kernel's 15-character comm).
_PARTS = {
    "postgres": "PostgreSQL",
    "beam.smp": "broker",
    "erl_child_setup": "broker",
    "tansu": "broker",
}


def _cpu_seconds_by_part(daemons: list[subprocess.Popen[bytes]]) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of every process that belongs to a part, by pid."""
    own = os.getpid()
    daemon_pids = {proc.pid for proc in daemons}
    seen: dict[int, tuple[str, float]] = {}
    for process in psutil.process_iter(["name", "cpu_times"]):
        pid, name, times = process.pid, process.info["name"], process.info["cpu_times"]
        if times is None:
            continue
        part = (
            "daemon"
            if pid in daemon_pids
            else "bench"
            if pid == own
            else _PARTS.get(name or "", "")
        )
        if part:
            seen[pid] = (part, float(times.user + times.system))
    return seen


def _parts_per_job(
    start: dict[int, tuple[str, float]],
    end: dict[int, tuple[str, float]],
    machine: float,
    jobs: int,
) -> dict[str, float]:
    # A process that started in the span counts from zero; one that ended in it is lost
    # to its part and lands in "rest" (PostgreSQL backends live as long as the daemon).
    used: dict[str, float] = dict.fromkeys(("daemon", "PostgreSQL", "broker", "bench"), 0.0)
    for pid, (part, seconds) in end.items():
        before = start.get(pid)
        used[part] += seconds - (before[1] if before and before[0] == part else 0.0)
    used["rest"] = machine - sum(used.values())
    return {part: seconds * 1e6 / jobs for part, seconds in used.items()}


def _cpu_seconds(*processes: psutil.Process) -> float:
    return sum(float(t.user + t.system) for t in (p.cpu_times() for p in processes))
