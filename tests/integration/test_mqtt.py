"""MQTT intake against the real Mosquitto: QoS 1, PUBACK after commit, persistent sessions."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jobwire.config import Config
from tests.support.daemon import Daemon as DaemonProcess
from tests.support.daemon import one_source_config, publish_confirmed
from tests.support.inprocess import running_daemon
from tests.support.mqtt import Mosquitto, clear_session, create_session, publish
from tests.support.rows import assert_exactly, job_count, jobs_at_least, scalar
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)
PORT = 1883


@pytest.fixture
async def topic() -> str:
    return f"jw-test/{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def client_ids() -> AsyncIterator[list[str]]:
    """Client ids for the test; their persistent sessions are cleared afterwards."""
    ids = [f"jw-test-{uuid.uuid4().hex[:10]}" for _ in range(2)]
    yield ids
    for client_id in ids:
        await clear_session(PORT, client_id)


def mqtt_source(topic: str, client_id: str, port: int = PORT, **extra: Any) -> dict[str, Any]:
    return {
        "name": "sensors",
        "type": "mqtt",
        "url": f"mqtt://127.0.0.1:{port}",
        "topics": [topic],
        "client_id": client_id,
        "session_expiry": "10m",
        "route": {"handler": "noop", "dedup_key": "json:$.i"},
        **extra,
    }


def mqtt_config(database_url: str, topic: str, client_id: str, **extra: Any) -> Config:
    return Config.model_validate(
        {
            "database": {"url": database_url},
            "workers": {"poll_interval": "200ms", "concurrency": 32},
            "sources": [mqtt_source(topic, client_id, **extra)],
        }
    )


def bodies(n: int, start: int = 0) -> list[bytes]:
    return [b'{"i": %d}' % i for i in range(start, start + n)]


async def test_thousand_qos1_messages_become_thousand_jobs_with_topic_and_properties(
    database_url: str, topic: str, client_ids: list[str]
) -> None:
    n = 1000
    config = mqtt_config(database_url, f"{topic}/+/reading", client_ids[0])
    async with running_daemon(config) as daemon:
        sent = await publish(PORT, f"{topic}/s1/reading", bodies(n), {"trace": "t-1"})
        assert sent == n
        await wait_for(
            lambda: jobs_at_least(database_url, n, "status = 'succeeded'"),
            timeout=60,
            what=f"{n} succeeded jobs",
        )
        counters = daemon.sources[0].intake.counters
        assert (counters.stored, counters.acked) == (n, n)
    await assert_exactly(database_url, n)
    headers = json.loads(await scalar(database_url, "SELECT headers FROM jobwire.jobs LIMIT 1"))
    assert headers == {"trace": "t-1", "mqtt-topic": f"{topic}/s1/reading"}


async def test_messages_published_while_the_daemon_is_down_arrive_on_restart(
    database_url: str, topic: str, client_ids: list[str]
) -> None:
    config = mqtt_config(database_url, topic, client_ids[0])
    async with running_daemon(config):
        pass  # the first start creates the persistent session and its subscription
    assert await publish(PORT, topic, bodies(500)) == 500
    async with running_daemon(config):
        await wait_for(lambda: jobs_at_least(database_url, 500), timeout=60, what="500 jobs")
    await assert_exactly(database_url, 500)


def test_killed_after_receiving_before_committing_gets_the_messages_again(
    database_url: str, topic: str, client_ids: list[str], tmp_path: Path
) -> None:
    """The manual-PUBACK proof: with paho's automatic acks this test loses all 50."""
    n = 50
    # No dedup key: a message stored twice would show as a 51st job.
    source = mqtt_source(topic, client_ids[0], route={"handler": "noop", "dedup_key": "none"})
    config = one_source_config(tmp_path, database_url, source)
    # Create the session first (a daemon that stops at once), then publish through the CLI.
    create_session(config, tmp_path / "first.log")
    publish_confirmed(config, "sensors", n)

    killed = DaemonProcess(
        config, tmp_path / "killed.log", env={"JOBWIRE_FAILPOINT": "intake.before_store"}
    )
    assert killed.wait(60) == -9  # received a batch, killed before storing it
    assert asyncio.run(job_count(database_url)) == 0

    second = DaemonProcess(config, tmp_path / "second.log")
    try:
        second.wait_ready()
        asyncio.run(wait_for(lambda: jobs_at_least(database_url, n), timeout=60, what="all"))
        assert second.terminate() == 0
    finally:
        second.stop_quietly()
    assert asyncio.run(job_count(database_url)) == n


async def test_two_instances_with_a_shared_subscription_split_the_load(
    database_url: str, topic: str, client_ids: list[str]
) -> None:
    n = 2000
    configs = [
        mqtt_config(database_url, topic, client_id, shared_group="jw") for client_id in client_ids
    ]
    async with running_daemon(configs[0]) as one, running_daemon(configs[1]) as two:
        assert await publish(PORT, topic, bodies(n)) == n
        await wait_for(lambda: jobs_at_least(database_url, n), timeout=60, what=f"{n} jobs")
        stored = [d.sources[0].intake.counters.stored for d in (one, two)]
    assert all(stored), f"one instance got nothing: {stored}"
    assert sum(stored) == n
    await assert_exactly(database_url, n)


@pytest.mark.slow
async def test_raised_broker_limits_keep_twenty_thousand_queued_for_an_offline_daemon(
    database_url: str, topic: str, client_ids: list[str], mosquitto: Mosquitto
) -> None:
    """Mosquitto's default max_queued_messages (1000) would drop 19,000 of these silently."""
    config = Config.model_validate(
        {
            "database": {"url": database_url},
            "workers": {"concurrency": 64},
            "sources": [mqtt_source(topic, client_ids[0], port=mosquitto.port, prefetch=1000)],
        }
    )
    async with running_daemon(config):
        pass  # session and subscription exist; the daemon is now away
    n = 20_000
    assert await publish(mosquitto.port, topic, bodies(n)) == n
    async with running_daemon(config):
        await wait_for(lambda: jobs_at_least(database_url, n), timeout=120, what=f"{n} jobs")
    await assert_exactly(database_url, n)
