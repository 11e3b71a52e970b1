"""python -m bench: jobwire side by side with its ceilings and its peers, in one run.

Every figure is the median of ``--runs`` runs on the same PostgreSQL and brokers, with
durable commits for everyone (no one turns off fsync or synchronous_commit), and every
asyncio program (ceilings, PgQueuer, Procrastinate) on uvloop, as ``jobwire run`` is:

- ceilings: a bare aio-pika consumer with batched acks; a bare stomp.py consumer with
  client-individual acks (RabbitMQ's STOMP plugin); a bare aiomqtt QoS 1 consumer with
  manual PUBACKs (a private Mosquitto with the shipped limits); asyncpg batched inserts;
  jobwire's store path alone (insert as running + complete, no broker, no handler);
- jobwire: drain of a pre-filled table at its defaults (concurrency 256) and at concurrency
  512, and by two daemons; AMQP drain at its defaults (prefetch 500, concurrency 256), at
  prefetch 1000 and concurrency 512, and by two daemons (bench/defaults.py sweeps both);
  Kafka drain (tansu); STOMP and MQTT drains (prefetch 1000, concurrency 256, beside the
  same prefetch in the ceilings);
  for each drain, what it wrote to PostgreSQL per job (bench/pgstats.py);
- a backlog of five times the jobs drained by jobwire at its defaults and by PgQueuer at
  its best (batch 100/500): a rate a drain of about a second cannot show;
- peers, each swept over the setting its docs name for throughput and reported at its
  best (with the setting) and its default: PgQueuer (batch size 10/100/500), Procrastinate
  (worker concurrency 1/10/50), Celery (acks_late, no result backend, prefork -c 2/4 x
  prefetch multiplier 4/32) draining RabbitMQ. A peer that is not installed is skipped
  with a line saying so (they come with ``pip install -e '.[bench]'``);
- jobwire publish -> handler-start latency at a steady 1,000 msg/s (AMQP; and SQL inserts
  with LISTEN/NOTIFY and with polling only), and a bare aio-pika consumer's publish ->
  callback at the same rate, the floor under the AMQP figure;
- peak RSS of the jobwire process with 10,000 jobs in flight (``--latency-only``: just
  these last two).

Prints one table with its ratios (best against best, defaults against defaults), writes
JSON and a PNG bar chart under bench/results/ (not committed).

    .venv/bin/python -m bench --jobs 20000 --runs 3
    .venv/bin/python -m bench --jobs 5000 --runs 1 --only STOMP MQTT stomp aiomqtt
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import psutil
from tests.support.kafka import TansuBroker

from bench import amqp_drain, kafka_drain, report, scaleout, stomp_mqtt
from bench.common import (
    AMQP,
    REPO,
    Drain,
    JobsWatch,
    daemon,
    drain_source,
    fresh_database,
    run,
    until,
)
from bench.report import Measured
from jobwire.models import JobSpec, JobStatus, Outcome
from jobwire.store.base import DirectStart
from jobwire.store.postgres import PostgresStore, migrate

# -- ceilings ------------------------------------------------------------------------


async def ceiling_amqp(n: int) -> float:
    queue = f"jw-bench-raw-{uuid.uuid4().hex[:8]}"
    await amqp_drain.preload(AMQP, queue, n)
    return n / await amqp_drain.raw_drain(AMQP, queue, n, 1000)


async def amqp_adapter_alone(n: int) -> float:
    queue = f"jw-bench-adapter-{uuid.uuid4().hex[:8]}"
    await amqp_drain.preload(AMQP, queue, n)
    return n / await amqp_drain.adapter_drain(AMQP, queue, n, 1000)


async def ceiling_insert(n: int) -> float:
    async with fresh_database() as url:
        conn = await asyncpg.connect(url)
        await conn.execute(
            "CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " payload jsonb, created_at timestamptz NOT NULL DEFAULT now())"
        )
        t0 = time.perf_counter()
        for start in range(0, n, 1000):
            count = min(1000, n - start)
            await conn.execute(
                "INSERT INTO t (payload) SELECT p::jsonb FROM unnest($1::text[]) AS p",
                ['{"i": 1}'] * count,
            )
        elapsed = time.perf_counter() - t0
        await conn.close()
    return n / elapsed


async def ceiling_store(n: int) -> float:
    """jobwire's own statements with nothing else: each batch of 500 Kafka-like rows inserted
    as running (the intake's hand-off) and then completed, two such loops side by side (as
    the intake and the pool's completions run). No broker, no handler, no pool: the most
    any broker path can reach with jobwire's schema on this machine."""
    async with fresh_database() as url:
        await migrate(url, "jobwire")
        store = await PostgresStore.connect(url, min_size=2, max_size=2)
        per_loop = n // 2

        async def loop(name: str) -> None:
            for start in range(0, per_loop, 500):
                count = min(500, per_loop - start)
                specs = [
                    JobSpec(
                        "noop",
                        payload_json='{"bench": 1}',
                        dedup_key=f"{name}/0/{start + i}",
                        source="bench",
                        headers={"kafka-topic": name, "kafka-offset": str(start + i)},
                    )
                    for i in range(count)
                ]
                ids = await store.enqueue_many(specs, DirectStart(name, 60.0, [True] * count))
                await store.complete_many(
                    name, [Outcome(i, 1, JobStatus.SUCCEEDED, 0.0) for i in ids if i]
                )

        t0 = time.perf_counter()
        await asyncio.gather(loop("a"), loop("b"))
        elapsed = time.perf_counter() - t0
        await store.close()
    return 2 * per_loop / elapsed


# -- jobwire -------------------------------------------------------------------------


async def jobwire_drain(n: int) -> Measured:
    result = await scaleout.table_drain(n, concurrency=512)
    return Measured(result.rate, result.writes, steady=result.steady_rate)


async def jobwire_drain_defaults(n: int) -> Measured:
    result = await scaleout.table_drain(n, concurrency=None)
    return Measured(result.rate, result.writes, steady=result.steady_rate)


async def jobwire_backlog(n: int) -> Measured:
    result = await scaleout.table_drain(report.BACKLOG * n, concurrency=None)
    return Measured(result.rate, result.writes, steady=result.steady_rate)


async def jobwire_drain_two(n: int) -> Measured:
    result = await scaleout.table_drain(n, concurrency=512, daemons=2)
    return Measured(result.rate, result.writes, steady=result.steady_rate)


async def jobwire_amqp(n: int) -> Measured:
    return _drained(await amqp_drain.drain(AMQP, n, prefetch=1000, concurrency=512))


async def jobwire_amqp_defaults(n: int) -> Measured:
    queue = f"jw-bench-{uuid.uuid4().hex[:8]}"
    await amqp_drain.preload(AMQP, queue, n)
    try:
        return _drained(await drain_source({"type": "amqp", "url": AMQP, "queue": queue}, n, None))
    finally:
        await amqp_drain.delete_queue(AMQP, queue)


async def jobwire_amqp_two(n: int) -> Measured:
    return _drained(await scaleout.amqp_drain_by(n, daemons=2, concurrency=512))


async def jobwire_kafka(n: int) -> Measured:
    with tempfile.TemporaryDirectory() as tmp:
        broker = TansuBroker(Path(tmp) / "tansu.log").start()
        try:
            return _drained(await kafka_drain.drain(broker.bootstrap, n, 256, 1000))
        finally:
            broker.stop()


async def jobwire_stomp(n: int) -> Measured:
    return _drained(await stomp_mqtt.stomp_drain(n, prefetch=1000, concurrency=256))


async def jobwire_mqtt(n: int) -> Measured:
    return _drained(await stomp_mqtt.mqtt_drain(n, prefetch=1000, concurrency=256))


def _drained(drain: Drain) -> Measured:
    pool = drain.pool
    path = (
        f"{pool['direct']} handed over by the intake, {pool['claimed']} claimed"
        if "direct" in pool and "claimed" in pool
        else ""
    )
    return Measured(drain.rate, drain.writes, steady=drain.steady_rate, path=path)


# -- peers ---------------------------------------------------------------------------
# Each peer at the setting its docs name for throughput, swept; the report shows the best
# with its setting, and the peer's default beside it.


def _missing(module: str, peer: str) -> bool:
    if importlib.util.find_spec(module) is not None:
        return False
    print(f"  skipped: {peer} is not installed (pip install -e '.[bench]')", flush=True)
    return True


async def _peer(which: str, n: int, setting: int) -> float:
    async with fresh_database(f"jwpeer_{which}") as url:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.peers",
            which,
            url,
            str(n),
            str(setting),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{which} exited {proc.returncode}")
        return n / float(out.decode().strip().splitlines()[-1])


async def _sweep(settings: dict[str, Callable[[], Awaitable[float]]], default: str) -> Measured:
    variants = {name: await measure() for name, measure in settings.items()}
    best = max(variants, key=lambda name: variants[name])
    return Measured(variants[best], settings=best, variants=variants, default=default)


async def pgqueuer(n: int) -> Measured | None:
    if _missing("pgqueuer", "PgQueuer"):
        return None
    sizes = (10, 100, 500)  # its default, 10, first
    return await _sweep(
        {f"batch {b}": functools.partial(_peer, "pgqueuer", n, b) for b in sizes}, "batch 10"
    )


async def pgqueuer_backlog(n: int) -> Measured | None:
    if _missing("pgqueuer", "PgQueuer"):
        return None
    # Its two best batch sizes at --jobs (batch 10, its default, is never the best).
    count = report.BACKLOG * n
    return await _sweep(
        {f"batch {b}": functools.partial(_peer, "pgqueuer", count, b) for b in (100, 500)},
        "batch 10 (not run here)",
    )


async def procrastinate(n: int) -> Measured | None:
    if _missing("procrastinate", "Procrastinate"):
        return None
    # A few hundred jobs/s: a tenth of the jobs is enough for a stable rate.
    count = max(500, n // 10)
    return await _sweep(
        {
            f"concurrency {c}": functools.partial(_peer, "procrastinate", count, c)
            for c in (1, 10, 50)
        },
        "concurrency 1",
    )


async def celery(n: int) -> Measured | None:
    if _missing("celery", "Celery"):
        return None
    grid = [(c, m) for c in (2, 4) for m in (4, 32)]  # default: -c cores (2), multiplier 4
    return await _sweep(
        {f"-c {c}, prefetch x{m}": functools.partial(_celery, n, c, m) for c, m in grid},
        "-c 2, prefetch x4",
    )


async def _celery(n: int, concurrency: int, prefetch_multiplier: int) -> float:
    queue = f"jw-bench-celery-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "BENCH_CELERY_QUEUE": queue,
        "BENCH_CELERY_PREFETCH": str(prefetch_multiplier),
        "BENCH_AMQP": "amqp://guest:guest@127.0.0.1//",
    }
    publish = (
        "import sys; from bench.peers import app;"
        f" [app.send_task('noop', queue={queue!r}) for _ in range({n})]"
    )
    await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", publish], cwd=REPO, env=env, check=True
    )
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "bench.peers:app", "worker"),
            *("-c", str(concurrency), "-P", "prefork", "-Q", queue, "--loglevel", "warning"),
            *("--without-heartbeat", "--without-gossip", "--without-mingle"),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    connection = await aio_pika.connect(AMQP)
    try:
        channel = await connection.channel()

        async def drained() -> bool:
            declared = await channel.declare_queue(queue, passive=True)
            # Ready messages only: at the end at most prefetch x processes are
            # unacknowledged, a rounding error at these counts.
            return (declared.declaration_result.message_count or 0) == 0

        # The first poll would see a full queue: start timing when the worker consumes.
        await until(lambda: _consumed(channel, queue, n), 120)
        t0 = time.perf_counter()
        start_count = await _ready(channel, queue)
        await until(drained, 1800)
        elapsed = time.perf_counter() - t0
        await channel.queue_delete(queue)
    finally:
        worker.terminate()
        worker.wait(60)
        await connection.close()
    return start_count / elapsed


async def _ready(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.message_count or 0)


async def _consumed(channel: aio_pika.abc.AbstractChannel, queue: str, n: int) -> bool:
    return await _ready(channel, queue) < n


# -- latency and memory ----------------------------------------------------------------


async def latency(
    rate: int = 1000, seconds: float = 5.0, mode: str = "amqp", batch_delay: str | None = None
) -> dict[str, float]:
    """publish -> handler start, p50 and p99 in ms, at a steady ``rate`` per second."""
    n = int(rate * seconds)
    queue = f"jw-bench-lat-{uuid.uuid4().hex[:8]}"
    async with fresh_database() as url:
        await migrate(url, "jobwire")
        config: dict[str, Any] = {
            "database": {"url": url},
            "workers": {"concurrency": 64, "listen": mode != "sql-polling", "poll_interval": "1s"},
            # The handler stamps its own start: the figure ends where a handler begins, not
            # at the row's started_at (for a job handed straight to the pool, that is the
            # insert's transaction time, before the commit).
            "handlers": {"stamp": "bench.handlers:stamp"},
        }
        if mode == "amqp":
            config["sources"] = [
                {
                    "name": "lat",
                    "type": "amqp",
                    "url": AMQP,
                    "queue": queue,
                    "route": {"handler": "stamp"},
                    **({"batch_delay": batch_delay} if batch_delay is not None else {}),
                }
            ]
        with daemon(config) as proc:
            await asyncio.sleep(2.0)  # started and connected
            if mode == "amqp":
                await _steady_amqp(queue, rate, n)
            else:
                await _steady_sql(url, rate, n)
            async with JobsWatch.open(url) as watch:
                await until(lambda: watch.succeeded_at_least(n), 120, proc)
        rows = await _latencies(url)
    if mode == "amqp":
        await amqp_drain.delete_queue(AMQP, queue)
    q = statistics.quantiles(rows, n=100)
    return {"p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000}


async def latency_bare(rate: int = 1000, seconds: float = 5.0) -> dict[str, float]:
    """publish -> a bare aio-pika consumer's callback, p50 and p99 in ms, at the same steady
    rate: the floor under jobwire's AMQP figure (broker and client, no store)."""
    n = int(rate * seconds)
    queue = f"jw-bench-lat-{uuid.uuid4().hex[:8]}"
    lags: list[float] = []
    connection = await aio_pika.connect(AMQP)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        declared = await channel.declare_queue(queue, durable=True)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            lags.append(time.time() - json.loads(message.body)["t"])
            await message.ack()

        tag = await declared.consume(on_message)
        await _steady_amqp(queue, rate, n)

        async def all_seen() -> bool:
            return len(lags) >= n

        await until(all_seen, 60, None)
        await declared.cancel(tag)
        await channel.queue_delete(queue)
    finally:
        await connection.close()
    q = statistics.quantiles(lags, n=100)
    return {"p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000}


async def _latencies(url: str) -> list[float]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT (result->>'started')::float8 - (payload->>'t')::float8 AS lag FROM jobwire.jobs"
        )
    finally:
        await conn.close()
    return [float(r["lag"]) for r in rows]


async def _paced(rate: int, n: int, send: Callable[[bytes], Awaitable[object]]) -> None:
    """Call ``send`` n times at ``rate`` per second, each with {"t": the time it was sent}."""
    start = time.perf_counter()
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(json.dumps({"t": time.time()}).encode())


async def _steady_amqp(queue: str, rate: int, n: int) -> None:
    connection = await aio_pika.connect(AMQP)
    channel = await connection.channel(publisher_confirms=False)
    await channel.declare_queue(queue, durable=True)

    async def send(body: bytes) -> object:
        message = aio_pika.Message(
            body, message_id=uuid.uuid4().hex, content_type="application/json"
        )
        return await channel.default_exchange.publish(message, routing_key=queue)

    await _paced(rate, n, send)
    await connection.close()


async def _steady_sql(url: str, rate: int, n: int) -> None:
    conn = await asyncpg.connect(url)

    async def send(body: bytes) -> object:
        return await conn.execute(
            "INSERT INTO jobwire.jobs (handler, payload) VALUES ('stamp', $1::jsonb)",
            body.decode(),
        )

    await _paced(rate, n, send)
    await conn.close()


async def peak_rss(in_flight: int = 10_000) -> float:
    """MB: the daemon running ``in_flight`` sleeping jobs at once."""
    async with fresh_database() as url:
        await migrate(url, "jobwire")
        store = await PostgresStore.connect(url, min_size=1, max_size=2)
        spec = JobSpec("sleep", payload={"seconds": 5})
        for start in range(0, in_flight, 5000):
            await store.enqueue_many([spec] * min(5000, in_flight - start))
        await store.close()
        config = {
            "database": {"url": url},
            "workers": {"concurrency": in_flight, "lease": "120s"},
        }
        peak = 0.0
        with daemon(config) as proc:
            watched = psutil.Process(proc.pid)
            deadline = time.monotonic() + 120
            async with JobsWatch.open(url) as watch:
                while time.monotonic() < deadline:
                    peak = max(peak, watched.memory_info().rss / 2**20)
                    if await watch.succeeded_at_least(in_flight):
                        break
                    await asyncio.sleep(0.1)
    return peak


# -- the run -------------------------------------------------------------------------

Scenario = Callable[[int], Awaitable["float | Measured | None"]]
SCENARIOS: dict[str, Scenario] = {
    "ceiling: aio-pika consume, batched acks": ceiling_amqp,
    "jobwire: AMQP adapter alone, no store": amqp_adapter_alone,
    "ceiling: stomp.py consume, client-individual acks": stomp_mqtt.stomp_ceiling,
    "ceiling: aiomqtt QoS 1, manual acks": stomp_mqtt.mqtt_ceiling,
    "ceiling: asyncpg batched insert": ceiling_insert,
    "ceiling: jobwire store path, no broker": ceiling_store,
    report.TABLE_DEFAULTS: jobwire_drain_defaults,
    report.TABLE: jobwire_drain,
    report.TABLE_TWO: jobwire_drain_two,
    report.AMQP_DEFAULTS: jobwire_amqp_defaults,
    report.AMQP: jobwire_amqp,
    report.AMQP_TWO: jobwire_amqp_two,
    "jobwire: Kafka drain (tansu)": jobwire_kafka,
    "jobwire: STOMP drain": jobwire_stomp,
    "jobwire: MQTT drain": jobwire_mqtt,
    report.PGQUEUER: pgqueuer,
    report.TABLE_BACKLOG: jobwire_backlog,
    report.PGQUEUER_BACKLOG: pgqueuer_backlog,
    report.PROCRASTINATE: procrastinate,
    report.CELERY: celery,
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="run only scenarios whose name contains this")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--latency-only", action="store_true", help="only latency and RSS")
    args = parser.parse_args()
    chosen = {k: v for k, v in SCENARIOS.items() if not args.only or any(o in k for o in args.only)}
    if args.latency_only:
        chosen = {}
    runs: dict[str, list[Measured]] = {name: [] for name in chosen}
    skipped: set[str] = set()
    # Round by round, not scenario by scenario: the machine drifts (the same drain measured
    # 3,600 jobs/s in one minute and 5,500 in the next), and a ratio is only fair when both
    # of its figures saw the same drift.
    for round_number in range(args.runs):
        for name, scenario in chosen.items():
            if name in skipped:
                continue
            result = await scenario(args.jobs)
            if result is None:  # a peer that is not installed: said so already
                skipped.add(name)
                continue
            measured = result if isinstance(result, Measured) else Measured(result)
            runs[name].append(measured)
            best = f" (best: {measured.settings})" if measured.settings else ""
            print(f"  {name}: run {round_number + 1}: {measured.rate:,.0f}/s{best}", flush=True)
    medians = {name: report.median(values) for name, values in runs.items() if values}
    extra: dict[str, Any] = {}
    if not args.skip_latency and not args.only:
        for mode in ("amqp", "sql-notify", "sql-polling"):
            lat = [await latency(mode=mode) for _ in range(args.runs)]
            extra[f"latency {mode}"] = {
                k: statistics.median(r[k] for r in lat) for k in ("p50_ms", "p99_ms")
            }
        lat = [await latency_bare() for _ in range(args.runs)]
        extra["latency amqp, bare aio-pika consumer (floor)"] = {
            k: statistics.median(r[k] for r in lat) for k in ("p50_ms", "p99_ms")
        }
        extra["peak RSS MB, 10,000 jobs in flight"] = statistics.median(
            [await peak_rss() for _ in range(args.runs)]
        )
    report.report(medians, runs, extra, args.jobs)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    run(main())
