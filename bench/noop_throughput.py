"""How many no-op jobs a second one ``jobwire run`` finishes from a pre-filled table.

Creates a fresh database on the given server, fills it with N no-op jobs, starts the real
daemon in a subprocess, waits until every job succeeded, stops it, and prints figures taken
from the rows themselves (first start to last finish), so start-up time is not counted.

    .venv/bin/python bench/noop_throughput.py --jobs 50000 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, too

from bench.common import JobsWatch, run
from jobwire.models import JobSpec
from jobwire.store.postgres import PostgresStore, migrate

REPO = Path(__file__).resolve().parents[1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--server",
        default=os.environ.get("JOBWIRE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args()

    name = f"jwbench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = args.server.rpartition("/")[0] + "/" + name
    try:
        await migrate(url, "jobwire")
        store = await PostgresStore.connect(url, min_size=1, max_size=2)
        t0 = time.perf_counter()
        for start in range(0, args.jobs, 5000):
            count = min(5000, args.jobs - start)
            await store.enqueue_many([JobSpec("noop") for _ in range(count)])
        fill = time.perf_counter() - t0
        print(f"enqueue_many: {args.jobs} jobs in {fill:.2f}s = {args.jobs / fill:,.0f} jobs/s")

        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "jobwire.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "database": {"url": url, "pool": {"min": 2, "max": 10}},
                        "workers": {"concurrency": args.concurrency, "poll_interval": "1s"},
                        "logging": {"format": "json", "level": "warning"},
                    }
                )
            )
            t_start = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "jobwire", "run", "-c", str(config)],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
            )
            async with JobsWatch.open(url) as watch:
                while not await watch.none_left():
                    if proc.poll() is not None:
                        raise SystemExit(f"daemon exited early with {proc.returncode}")
                    await asyncio.sleep(0.25)
                wall = time.perf_counter() - t_start
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(60)
                span = await watch.conn.fetchval(
                    "SELECT extract(epoch FROM max(finished_at) - min(started_at))"
                    " FROM jobwire.jobs"
                )
        await store.close()
        print(f"daemon: {args.jobs} no-op jobs, concurrency {args.concurrency}")
        print(
            f"  first start -> last finish: {float(span):.2f}s = "
            f"{args.jobs / float(span):,.0f} jobs/s"
        )
        print(f"  wall time including start-up and 250ms polling: {wall:.2f}s")
        print(f"  daemon exit code on SIGTERM: {code}")
    finally:
        if not args.keep:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    run(main())
