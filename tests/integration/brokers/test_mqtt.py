"""MQTT (a private Mosquitto with the shipped limits): the broker suite, and the MQTT
source's own tests (persistent sessions, manual PUBACK, shared subscriptions, the raised
queue limits).

MQTT has no message id: the routes dedup on the user property ``msg-id`` that the
independent publisher (paho-mqtt) sets, or on ``json:$.i``. The source subscribes with a
wildcard (``<topic>/+/reading``); the messages go to ``<topic>/s1/reading``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from structlog.testing import capture_logs

from jobwire.app import Daemon as InProcessDaemon
from tests.integration.brokers.base import BrokerSuite, Outage, cut_proxy, proxied
from tests.support import hostile as h
from tests.support.daemon import Daemon as DaemonProcess
from tests.support.daemon import one_source_config, publish_confirmed
from tests.support.inprocess import running_daemon
from tests.support.mqtt import Mosquitto, clear_session, create_session, publish
from tests.support.rows import assert_exactly, job_count, jobs_at_least, scalar
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)
JSON_DEDUP = {"handler": "noop", "dedup_key": "json:$.i"}


@dataclass(frozen=True)
class MqttTarget:
    """Where a test's sources consume from: the broker, a topic, client ids (sessions)."""

    port: int
    topic: str
    client_ids: tuple[str, str]
    url: str = ""  # the source's broker URL when not the broker itself (a proxy)

    @property
    def publish_topic(self) -> str:
        return f"{self.topic}/s1/reading"


def bodies(n: int, start: int = 0) -> list[bytes]:
    return [b'{"i": %d}' % i for i in range(start, start + n)]


class TestMqtt(BrokerSuite):
    """QoS 1, PUBACK after commit, persistent sessions (cleared after each test)."""

    source_name = "sensors"
    route_extra = {"dedup_key": "header:msg-id"}

    @pytest.fixture
    async def target(self, mosquitto: Mosquitto) -> AsyncIterator[MqttTarget]:
        ids = (f"jw-test-{uuid.uuid4().hex[:10]}", f"jw-test-{uuid.uuid4().hex[:10]}")
        yield MqttTarget(mosquitto.port, f"jw-test/{uuid.uuid4().hex[:10]}", ids)
        for client_id in ids:
            await clear_session(mosquitto.port, client_id)

    def source(self, target: MqttTarget) -> dict[str, Any]:
        return {
            "type": "mqtt",
            "url": target.url or f"mqtt://127.0.0.1:{target.port}",
            "topics": [f"{target.topic}/+/reading"],
            "client_id": target.client_ids[0],
            "session_expiry": "10m",
        }

    def publish(self, target: MqttTarget, outgoing: Sequence[h.Outgoing]) -> list[str | None]:
        return h.publish_mqtt(target.port, target.publish_topic, outgoing)

    def prepare_offline(self, target: MqttTarget, config: Path, tmp_path: Path) -> None:
        # The session (and its subscription) must exist before the messages are published.
        create_session(config, tmp_path / "session.log")

    async def check_many(
        self, target: MqttTarget, database_url: str, daemon: InProcessDaemon
    ) -> None:
        headers = json.loads(await scalar(database_url, "SELECT headers FROM jobwire.jobs LIMIT 1"))
        # The topic, and the user properties (here msg-id) travel with the job.
        assert headers["mqtt-topic"] == target.publish_topic
        assert headers["msg-id"].startswith("m-")

    @contextlib.asynccontextmanager
    async def outage(self, target: MqttTarget) -> AsyncIterator[Outage]:
        """The daemon reaches Mosquitto through a proxy (keep-alive 1s); the publisher
        goes straight to the broker."""
        async with proxied(target.port) as proxy:
            through = MqttTarget(
                target.port, target.topic, target.client_ids, f"mqtt://127.0.0.1:{proxy.port}"
            )
            yield Outage(through, lambda adapter: cut_proxy(proxy, adapter), {"keepalive": "1s"})

    # --- MQTT's own ---------------------------------------------------------------------

    async def test_user_properties_travel_with_the_job(
        self, database_url: str, target: MqttTarget
    ) -> None:
        config = self.config(database_url, target, JSON_DEDUP)
        async with running_daemon(config):
            assert await publish(target.port, target.publish_topic, bodies(3), {"trace": "t-1"})
            await wait_for(
                lambda: jobs_at_least(database_url, 3, "status = 'succeeded'"), what="3 jobs"
            )
        await assert_exactly(database_url, 3)
        headers = json.loads(await scalar(database_url, "SELECT headers FROM jobwire.jobs LIMIT 1"))
        assert headers == {"trace": "t-1", "mqtt-topic": target.publish_topic}

    async def test_string_properties_paho_refuses_neither_stop_the_source_nor_are_lost(
        self, database_url: str, target: MqttTarget
    ) -> None:
        # U+FEFF: Mosquitto forwards it (MQTT 5 says a receiver must keep it), and paho's
        # reader refused it, dropping the connection before the message reached jobwire;
        # the broker then sent it first on every new connection, for good.
        config = self.config(database_url, target, JSON_DEDUP)
        async with running_daemon(config):
            assert await publish(target.port, target.publish_topic, bodies(1), {"x": "a\ufeffb"})
            assert await publish(target.port, target.publish_topic, bodies(3, start=1))
            await wait_for(
                lambda: jobs_at_least(database_url, 4, "status = 'succeeded'"),
                timeout=30,
                what="the message with U+FEFF and the three after it",
            )
        await assert_exactly(database_url, 4)
        kept = await scalar(
            database_url, "SELECT headers->>'x' FROM jobwire.jobs WHERE headers ? 'x'"
        )
        assert kept == "a\ufeffb"

    async def test_the_topic_header_survives_more_user_properties_than_the_store_keeps(
        self, database_url: str, target: MqttTarget
    ) -> None:
        # The store keeps a message's first 256 headers; the topic was added last and cut.
        config = self.config(database_url, target, JSON_DEDUP)
        many = {f"p{i:03d}": "v" for i in range(300)}
        async with running_daemon(config):
            assert await publish(target.port, target.publish_topic, bodies(1), many)
            await wait_for(lambda: jobs_at_least(database_url, 1), what="the job")
        headers = json.loads(await scalar(database_url, "SELECT headers FROM jobwire.jobs"))
        assert headers["mqtt-topic"] == target.publish_topic
        assert headers["jobwire-headers-dropped"] == "45"  # 301 headers, 256 kept

    async def test_qos0_messages_while_the_source_is_held_are_kept_to_their_budget(
        self, database_url: str, target: MqttTarget
    ) -> None:
        # QoS 0 has no Receive Maximum window: while the source was held, aiomqtt queued
        # every such message the broker sent, without bound.
        n, budget = 200, 65_536
        config = self.config(database_url, target, JSON_DEDUP, qos0_backlog_bytes=budget)
        padded = [b'{"i": %d, "pad": "%s"}' % (i, b"x" * 7000) for i in range(n)]
        async with running_daemon(config) as daemon:
            source = daemon.sources[0]
            await wait_for(lambda: source.adapter.state.value == "up", what="the source up")
            await source.intake.hold("store")  # as while the database is away

            def accounted() -> bool:
                # Each message taken by the intake, waiting in the queue, or discarded.
                info = source.adapter.describe()
                taken = source.intake.counters.received
                return taken + info["queued"] + info["discarded"] == n + 1

            async with aiomqtt.Client(
                "127.0.0.1", target.port, protocol=aiomqtt.ProtocolVersion.V5
            ) as client:
                for body in padded:
                    await client.publish(target.publish_topic, body, qos=0)
                # QoS 1, after them on the same connection: it comes after them.
                await client.publish(target.publish_topic, b'{"i": 1000}', qos=1)
            await wait_for(accounted, timeout=30, what="every message received")
            queued = source.adapter.describe()["queued"]
            assert queued <= budget // 8000 + 1  # the QoS 0 ones within budget, the QoS 1 one

            await source.intake.release("store")
            await wait_for(
                lambda: jobs_at_least(database_url, 1, "payload->>'i' = '1000'"),
                what="the QoS 1 message",
            )
            discarded = source.adapter.describe()["discarded"]
            assert discarded >= n - 12
            assert await job_count(database_url) == n + 1 - discarded
            # The window is whole: later QoS 1 messages all arrive.
            assert await publish(target.port, target.publish_topic, bodies(20, 2000)) == 20
            await wait_for(
                lambda: jobs_at_least(database_url, n + 21 - discarded), what="20 more jobs"
            )
        await assert_exactly(database_url, n + 21 - discarded)

    async def test_a_retained_message_is_one_job_across_restarts(
        self, database_url: str, target: MqttTarget
    ) -> None:
        # No dedup key on the route (MQTT's default): before, every new connection's
        # subscribe had the broker send the retained message again, a new job each time.
        config = self.config(database_url, target, {"handler": "noop"})
        async with aiomqtt.Client(
            "127.0.0.1", target.port, protocol=aiomqtt.ProtocolVersion.V5
        ) as client:
            await client.publish(target.publish_topic, b'{"state": 1}', qos=1, retain=True)
        try:
            for start in range(3):
                async with running_daemon(config):
                    # A message after any retained one: once it is stored, so is anything
                    # the broker sent before it on this connection.
                    assert await publish(target.port, target.publish_topic, bodies(1, start))
                    done = f"payload->>'i' = '{start}'"
                    await wait_for(functools.partial(jobs_at_least, database_url, 1, done))
            assert await job_count(database_url, "payload->>'state' = '1'") == 1
            assert await job_count(database_url) == 4
        finally:
            async with aiomqtt.Client(
                "127.0.0.1", target.port, protocol=aiomqtt.ProtocolVersion.V5
            ) as client:
                await client.publish(target.publish_topic, b"", qos=1, retain=True)

    async def test_a_session_another_client_discarded_is_logged_as_lost(
        self, database_url: str, target: MqttTarget
    ) -> None:
        # Another client with the source's id and a clean start takes the session and
        # discards it (Mosquitto 2.0.11 just closes the source's connection, no reason
        # given). Before, the source came back "up" and the loss of its session, with
        # whatever it had queued, went unsaid.
        config = self.config(database_url, target, JSON_DEDUP)
        with capture_logs() as logs:
            async with running_daemon(config) as daemon:
                adapter = daemon.sources[0].adapter
                async with aiomqtt.Client(
                    "127.0.0.1",
                    target.port,
                    identifier=target.client_ids[0],
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=True,
                ):
                    await wait_for(lambda: adapter.last_error is not None, what="the source cut")

                def back() -> bool:
                    return adapter.state.value == "up" and adapter.describe()["sessions_lost"] == 1

                await wait_for(back, what="the source back, its session lost")
                # Subscribed again on the new session: later messages arrive.
                assert await publish(target.port, target.publish_topic, bodies(5)) == 5
                await wait_for(lambda: jobs_at_least(database_url, 5), what="5 jobs")
        events = [e["event"] for e in logs]
        assert events.count("mqtt_session_new") == 1  # the first connection's
        lost = [e for e in logs if e["event"] == "mqtt_session_lost"]
        assert [e["client_id"] for e in lost] == [target.client_ids[0]]
        await assert_exactly(database_url, 5)

    async def test_messages_published_while_the_daemon_is_down_arrive_on_restart(
        self, database_url: str, target: MqttTarget
    ) -> None:
        config = self.config(database_url, target, JSON_DEDUP)
        async with running_daemon(config):
            pass  # the first start creates the persistent session and its subscription
        assert await publish(target.port, target.publish_topic, bodies(500)) == 500
        async with running_daemon(config):
            await wait_for(lambda: jobs_at_least(database_url, 500), timeout=60, what="500 jobs")
        await assert_exactly(database_url, 500)

    def test_killed_after_receiving_before_committing_gets_the_messages_again(
        self, database_url: str, target: MqttTarget, tmp_path: Path
    ) -> None:
        """The manual-PUBACK proof: with paho's automatic acks this test loses all 50."""
        n = 50
        # No dedup key: a message stored twice would show as a 51st job. The topic without
        # a wildcard: ``jobwire publish`` sends to the source's first topic.
        source = {
            **self.source_config(target, {"handler": "noop", "dedup_key": "none"}),
            "topics": [target.publish_topic],
        }
        config = one_source_config(tmp_path, database_url, source)
        # Create the session first (a daemon that stops at once), then publish (the CLI).
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
        self, database_url: str, target: MqttTarget
    ) -> None:
        n = 2000
        configs = [
            self.config(database_url, target, JSON_DEDUP, shared_group="jw", client_id=client_id)
            for client_id in target.client_ids
        ]
        async with running_daemon(configs[0]) as one, running_daemon(configs[1]) as two:
            assert await publish(target.port, target.publish_topic, bodies(n)) == n
            await wait_for(lambda: jobs_at_least(database_url, n), timeout=60, what=f"{n} jobs")
            stored = [d.sources[0].intake.counters.stored for d in (one, two)]
        assert all(stored), f"one instance got nothing: {stored}"
        assert sum(stored) == n
        await assert_exactly(database_url, n)

    @pytest.mark.slow
    async def test_raised_broker_limits_keep_twenty_thousand_queued_for_an_offline_daemon(
        self, database_url: str, target: MqttTarget
    ) -> None:
        """Mosquitto's default max_queued_messages (1000) would drop 19,000 of these."""
        config = self.config(
            database_url, target, JSON_DEDUP, workers={"concurrency": 64}, prefetch=1000
        )
        async with running_daemon(config):
            pass  # session and subscription exist; the daemon is now away
        n = 20_000
        assert await publish(target.port, target.publish_topic, bodies(n)) == n
        async with running_daemon(config):
            await wait_for(lambda: jobs_at_least(database_url, n), timeout=120, what=f"{n} jobs")
        await assert_exactly(database_url, n)
