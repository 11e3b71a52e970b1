"""Relay drills on RabbitMQ: the output's connection cut while 2,000 messages are pending,
and the daemon SIGKILLed between the broker's confirm and the mark. Nothing is lost; the
consumer counts distinct message ids, and duplicates (only after a crash between confirm
and mark) are counted and bounded."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from jobwire.config import Config
from jobwire.models import JobSpec
from tests.integration.outputs.base import HANDLER, enqueue, outbox_counts
from tests.integration.outputs.test_amqp import amqp_consumer, fresh_queue
from tests.support import hostile as h
from tests.support.daemon import Daemon, jobwire, write_config
from tests.support.inprocess import running_daemon
from tests.support.proxy import TcpProxy
from tests.support.rows import scalar
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

JOBS, PER_JOB = 40, 50  # 2,000 messages
BATCH = 100


@pytest.fixture
def queue() -> Iterator[str]:
    yield from fresh_queue()


def specs() -> list[JobSpec]:
    """40 jobs of 50 messages each, a key per job."""
    return [JobSpec("pub", {"count": PER_JOB, "key": f"k{i}"}) for i in range(JOBS)]


def expected(ids: list[int]) -> set[str]:
    return {f"jobwire-{job}-{n}" for job in ids for n in range(1, PER_JOB + 1)}


async def test_cut_connection_holds_the_outbox_then_all_arrive(
    database_url: str, queue: str, tmp_path: Path
) -> None:
    proxy = await TcpProxy("127.0.0.1", 5672).start()
    try:
        config = Config.model_validate(
            {
                "database": {"url": database_url},
                "workers": {"poll_interval": "200ms", "concurrency": 16},
                "handlers": {"pub": HANDLER},
                "outputs": {
                    "out": {
                        "type": "amqp",
                        "url": f"amqp://guest:guest@127.0.0.1:{proxy.port}/",
                        "routing_key": queue,
                        "batch_size": BATCH,
                        "publish_timeout": "3s",
                    }
                },
            }
        )
        async with amqp_consumer(queue) as got, running_daemon(config) as daemon:
            relay = daemon.relays[0]
            await wait_for(lambda: relay.counters.state == "up", what="relay connected")
            proxy.cut()
            ids = await enqueue(database_url, specs())
            await wait_for(
                lambda: _succeeded(database_url, JOBS), timeout=60, what="all jobs succeeded"
            )
            rows, sent = await outbox_counts(database_url)
            assert (rows, sent) == (JOBS * PER_JOB, 0), "the outbox holds every message"
            await wait_for(lambda: relay.counters.state == "down", what="relay noticed the cut")
            # The daemon stays ready while an output is away; metrics show what waits.
            assert daemon.http is not None
            base = f"http://127.0.0.1:{daemon.http.port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/readyz") as ready:
                    assert ready.status == 200, await ready.text()
                async with http.get(f"{base}/metrics") as metrics:
                    text = await metrics.text()
            assert f'jobwire_outbox_pending{{output="out"}} {JOBS * PER_JOB}.0' in text
            assert 'jobwire_outbox_oldest_seconds{output="out"}' in text
            assert got.messages == []
            stats = await asyncio.to_thread(
                jobwire,
                "stats",
                "--json",
                "-c",
                str(write_config(tmp_path / "stats.yaml", {"database": {"url": database_url}})),
            )
            assert json.loads(stats.stdout)["outbox"]["out"]["pending"] == JOBS * PER_JOB
            proxy.restore()
            await wait_for(lambda: got.distinct() >= expected(ids), timeout=60, what="2,000 arrive")
            await wait_for(
                lambda: _all_sent(database_url, JOBS * PER_JOB), timeout=20, what="marked"
            )
        assert got.distinct() == expected(ids)
        duplicates = len(got.messages) - len(got.distinct())
        # No crash here: a batch whose confirms were lost to the cut may go again, no more.
        assert duplicates <= BATCH, f"{duplicates} duplicates"
        _assert_key_order(got.ids())
    finally:
        await proxy.close()


async def test_daemon_killed_between_confirm_and_mark_then_all_arrive(
    database_url: str, queue: str, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "jobwire.yaml",
        {
            "database": {"url": database_url},
            "logging": {"format": "json"},
            "workers": {"poll_interval": "200ms", "concurrency": 16},
            "handlers": {"pub": HANDLER},
            "outputs": {
                "out": {
                    "type": "amqp",
                    "url": h.AMQP_URL,
                    "routing_key": queue,
                    "batch_size": BATCH,
                    "publish_timeout": "5s",  # the lease: 10 s, what the second daemon waits
                }
            },
        },
    )
    async with amqp_consumer(queue) as got:
        ids = await enqueue(database_url, specs())
        first = Daemon(
            config, tmp_path / "first.log", env={"JOBWIRE_FAILPOINT": "outbox_confirmed"}
        )
        try:
            code = await asyncio.to_thread(first.wait, 60)
        finally:
            first.stop_quietly()
        assert code == -9, f"the failpoint killed the daemon (exit {code})"
        _, sent = await outbox_counts(database_url)
        assert sent == 0, "killed before its first mark"
        second = Daemon(config, tmp_path / "second.log")
        try:
            await wait_for(lambda: got.distinct() >= expected(ids), timeout=90, what="2,000 arrive")
            await wait_for(
                lambda: _all_sent(database_url, JOBS * PER_JOB), timeout=30, what="marked"
            )
            assert await asyncio.to_thread(second.terminate) == 0
        finally:
            second.stop_quietly()
    assert got.distinct() == expected(ids)
    duplicates = len(got.messages) - len(got.distinct())
    # Exactly the batch confirmed before the kill went out twice (its lease had to pass:
    # the second daemon takes those rows after it).
    assert 0 < duplicates <= BATCH, f"{duplicates} duplicates"


def _assert_key_order(ids: list[str | None]) -> None:
    """Each job's messages (one key per job) arrived in n order (first arrivals)."""
    seen: dict[str, list[int]] = collections.defaultdict(list)
    for message_id in dict.fromkeys(ids):
        assert message_id is not None
        _, job, n = message_id.split("-")
        seen[job].append(int(n))
    for job, ns in seen.items():
        assert ns == sorted(ns), f"job {job} out of order: {ns}"


async def _succeeded(database_url: str, n: int) -> bool:
    done = await scalar(
        database_url, "SELECT count(*) FROM jobwire.jobs WHERE status = 'succeeded'"
    )
    return int(done) >= n


async def _all_sent(database_url: str, n: int) -> bool:
    return (await outbox_counts(database_url))[1] >= n
