"""python -m bench: jobwire side by side with its ceilings and its peers, in one run.

Every figure is the median of ``--runs`` runs on the same PostgreSQL and RabbitMQ, with
durable commits for everyone (no one turns off fsync or synchronous_commit), and every
asyncio program (ceilings, PgQueuer, Procrastinate) on uvloop, as ``jobwire run`` is:

- ceilings: a bare aio-pika consumer with batched acks; asyncpg batched inserts; jobwire's
  store path alone (insert as running + complete, no broker, no handler);
- jobwire: drain of a pre-filled table, AMQP drain, Kafka drain (tansu);
- peers: PgQueuer drain (batch enqueue, then one worker, its defaults), Procrastinate drain,
  Celery (acks_late, no result backend, prefork -c 2) draining RabbitMQ;
- jobwire publish -> handler-start latency at a steady 1,000 msg/s (AMQP; and SQL inserts
  with LISTEN/NOTIFY and with polling only), and a bare aio-pika consumer's publish ->
  callback at the same rate, the floor under the AMQP figure;
- peak RSS of the jobwire process with 10,000 jobs in flight (``--latency-only``: just
  these last two).

Prints one table, writes JSON and a PNG bar chart under bench/results/ (not committed).

    .venv/bin/python -m bench --jobs 20000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
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

from bench import amqp_drain, kafka_drain
from bench.common import (
    AMQP,
    REPO,
    JobsWatch,
    daemon,
    fetchval,
    fresh_database,
    run,
    until,
)
from jobwire.models import JobSpec, JobStatus, Outcome
from jobwire.store.base import DirectStart
from jobwire.store.postgres import PostgresStore, migrate

RESULTS = REPO / "bench" / "results"


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


async def jobwire_drain(n: int) -> float:
    async with fresh_database() as url:
        await migrate(url, "jobwire")
        store = await PostgresStore.connect(url, min_size=1, max_size=2)
        for start in range(0, n, 5000):
            await store.enqueue_many([JobSpec("noop") for _ in range(min(5000, n - start))])
        await store.close()
        with daemon({"database": {"url": url}, "workers": {"concurrency": 256}}) as proc:
            async with JobsWatch.open(url) as watch:
                await until(watch.none_left, 600, proc)
        span = await fetchval(
            url, "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM jobwire.jobs"
        )
    return n / float(span)


async def jobwire_amqp(n: int) -> float:
    return (await amqp_drain.drain(AMQP, n, prefetch=1000, concurrency=256)).rate


async def jobwire_kafka(n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        broker = TansuBroker(Path(tmp) / "tansu.log").start()
        try:
            return (await kafka_drain.drain(broker.bootstrap, n, 256, 1000)).rate
        finally:
            broker.stop()


# -- peers ---------------------------------------------------------------------------


async def _peer(which: str, n: int) -> float:
    async with fresh_database(f"jwpeer_{which}") as url:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.peers",
            which,
            url,
            str(n),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{which} exited {proc.returncode}")
        return n / float(out.decode().strip().splitlines()[-1])


async def pgqueuer(n: int) -> float:
    return await _peer("pgqueuer", n)


async def procrastinate(n: int) -> float:
    # About 300 jobs/s: a tenth of the jobs is enough for a stable rate.
    return await _peer("procrastinate", max(500, n // 10))


async def celery(n: int) -> float:
    queue = f"jw-bench-celery-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "BENCH_CELERY_QUEUE": queue,
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
            *("-c", "2", "-P", "prefork", "-Q", queue, "--loglevel", "warning"),
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
        t0 = time.perf_counter()

        async def drained() -> bool:
            declared = await channel.declare_queue(queue, passive=True)
            # Ready messages only: at the end at most prefetch x 2 processes (8) are
            # unacknowledged, a rounding error at these counts.
            return (declared.declaration_result.message_count or 0) == 0

        # The first poll would see a full queue: start timing when the worker consumes.
        await until(lambda: _consumed(channel, queue, n), 120, None)
        t0 = time.perf_counter()
        start_count = await _ready(channel, queue)
        await until(drained, 1800, None)
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

Scenario = Callable[[int], Awaitable[float]]
SCENARIOS: dict[str, Scenario] = {
    "ceiling: aio-pika consume, batched acks": ceiling_amqp,
    "jobwire: AMQP adapter alone, no store": amqp_adapter_alone,
    "ceiling: asyncpg batched insert": ceiling_insert,
    "ceiling: jobwire store path, no broker": ceiling_store,
    "jobwire: drain a filled table": jobwire_drain,
    "jobwire: AMQP drain": jobwire_amqp,
    "jobwire: Kafka drain (tansu)": jobwire_kafka,
    "PgQueuer: drain a filled table": pgqueuer,
    "Procrastinate: drain a filled table": procrastinate,
    "Celery: AMQP drain (prefork -c 2, acks_late)": celery,
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
    rates: dict[str, list[float]] = {name: [] for name in chosen}
    # Round by round, not scenario by scenario: the machine drifts (the same drain measured
    # 3,600 jobs/s in one minute and 5,500 in the next), and a ratio is only fair when both
    # of its figures saw the same drift.
    for round_number in range(args.runs):
        for name, scenario in chosen.items():
            rate = await scenario(args.jobs)
            rates[name].append(rate)
            print(f"  {name}: run {round_number + 1}: {rate:,.0f}/s", flush=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    extra: dict[str, Any] = {}
    if not args.skip_latency and not args.only:
        for mode in ("amqp", "sql-notify", "sql-polling"):
            runs = [await latency(mode=mode) for _ in range(args.runs)]
            extra[f"latency {mode}"] = {
                k: statistics.median(r[k] for r in runs) for k in ("p50_ms", "p99_ms")
            }
        runs = [await latency_bare() for _ in range(args.runs)]
        extra["latency amqp, bare aio-pika consumer (floor)"] = {
            k: statistics.median(r[k] for r in runs) for k in ("p50_ms", "p99_ms")
        }
        extra["peak RSS MB, 10,000 jobs in flight"] = statistics.median(
            [await peak_rss() for _ in range(args.runs)]
        )
    _report(medians, rates, extra, args)


def _report(
    medians: dict[str, float],
    rates: dict[str, list[float]],
    extra: dict[str, Any],
    args: argparse.Namespace,
) -> None:
    drain = medians.get("jobwire: drain a filled table")
    amqp = medians.get("jobwire: AMQP drain")
    print()
    print(f"{'scenario':48} {'jobs/s':>10}  {'x jobwire':>10}")
    for name, value in medians.items():
        base = amqp if ("AMQP" in name or "aio-pika" in name) else drain
        ratio = f"{value / base:.2f}" if base else ""
        print(f"{name:48} {value:>10,.0f}  {ratio:>10}")
    ceiling = medians.get("ceiling: aio-pika consume, batched acks")
    if amqp and ceiling:
        print(f"jobwire AMQP drain / aio-pika ceiling: {amqp / ceiling:.0%}")
    for name, value in extra.items():
        print(f"{name}: {value}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    data = {
        "jobs": args.jobs,
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "medians": medians,
        "all_runs": rates,
        "extra": extra,
    }
    (RESULTS / f"{stamp}.json").write_text(json.dumps(data, indent=2))
    if _chart(medians, RESULTS / f"{stamp}.png"):
        print(f"written: bench/results/{stamp}.json, .png")
    else:
        print(f"written: bench/results/{stamp}.json (no chart: pip install -e '.[bench]')")


def _chart(medians: dict[str, float], path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:  # the chart is a nicety; the figures are printed and saved already
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(medians)
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(names) + 1.5))
    colors = ["tab:blue" if n.startswith("jobwire") else "tab:gray" for n in names]
    ax.barh(names, [medians[n] for n in names], color=colors)
    ax.invert_yaxis()
    ax.set_xlabel("jobs (or messages) per second, median")
    ax.set_title("jobwire side by side (same machine, same PostgreSQL and RabbitMQ)")
    for i, n in enumerate(names):
        ax.text(medians[n], i, f" {medians[n]:,.0f}", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    run(main())
