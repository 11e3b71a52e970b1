"""Flow control for every broker: a flood meets a slow pool; the backlog stays near its mark.

Above ``workers.max_backlog`` ready jobs each source stops taking messages (AMQP cancels
its consumer, STOMP disconnects, Kafka pauses its partitions, MQTT stops reading) and goes
on below ``backlog_resume``: the flood waits in the broker, not in the database.
"""

from __future__ import annotations

import asyncio

import pytest

from jobwire.config import Config
from tests.faults.harness import Broker, tally
from tests.support.inprocess import running_daemon
from tests.support.rows import job_count
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)
N, HIGH = 600, 60


async def ready_jobs(url: str) -> int:
    return await job_count(url, "status IN ('pending', 'retrying')")


async def test_a_flood_waits_in_the_broker_not_in_the_database(
    database_url: str, broker: Broker
) -> None:
    source = {
        "name": "drill",
        **broker.source(broker.port),
        # Each job sleeps a little: four workers are much slower than the flood.
        "route": {**broker.source(broker.port).get("route", {}), "handler": "sleep"},
        "batch_size": 20,
        "prefetch" if broker.kind != "kafka" else "max_in_flight": 20,
    }
    if broker.kind == "kafka":
        source["max_records"] = 20
    config = Config.model_validate(
        {
            "database": {"url": database_url},
            "workers": {
                "concurrency": 4,
                # Stored at once, as with other instances on the database: the flood must
                # meet the backlog mark, not wait for a slot (tests/integration/test_pacing.py).
                "hand_off_wait": 0,
                "poll_interval": "200ms",
                "max_backlog": HIGH,
                "backlog_resume": 20,
            },
            "sources": [source],
        }
    )
    async with running_daemon(config) as daemon:
        adapter, intake = daemon.sources[0].adapter, daemon.sources[0].intake
        states: set[str] = set()
        peak = 0
        publisher = asyncio.create_task(broker.publish(0, N))

        async def all_done() -> bool:
            nonlocal peak
            states.add(adapter.state.value)
            peak = max(peak, await ready_jobs(database_url))
            return (await tally(database_url, broker.kind, N, 0)).jobs >= N

        published = await publisher
        await wait_for(all_done, timeout=150, interval=0.05, what=f"{N} jobs stored")
        await wait_for(
            lambda: daemon.pool is not None and daemon.pool.counters.succeeded >= N,
            timeout=150,
            what="every job run",
        )
    print(f"DRILL flood {broker.kind}: published={published} peak_ready={peak} mark={HIGH}")
    assert published == N
    assert "paused" in states  # the source was held at least once
    # Past the mark only by what was already taken when it was crossed (a prefetch, a batch).
    assert peak <= HIGH + 60, peak
    assert intake.counters.stored == N
