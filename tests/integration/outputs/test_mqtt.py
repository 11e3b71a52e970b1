"""The MQTT output: the output suite on a private Mosquitto (MQTT 5, QoS 1)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest

from jobwire.adapters.mqtt.config import MqttOutput
from jobwire.adapters.mqtt.output import MqttPublisher
from jobwire.effects import OutboxRow
from tests.integration.outputs.base import OutputSuite, Received, collecting
from tests.support.mqtt import Mosquitto
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


class TestMqttOutput(OutputSuite):
    """MQTT 5: the id is the ``jobwire-id`` user property."""

    @pytest.fixture
    def target(self, mosquitto: Mosquitto) -> tuple[int, str]:
        return mosquitto.port, f"jw-out/{uuid.uuid4().hex[:8]}"

    def output(self, target: Any) -> dict[str, Any]:
        port, topic = target
        return {"type": "mqtt", "url": f"mqtt://127.0.0.1:{port}", "topic": topic}

    def consume(self, target: Any) -> contextlib.AbstractAsyncContextManager[Received]:
        return mqtt_consumer(*target)


@contextlib.asynccontextmanager
async def mqtt_consumer(port: int, topic: str) -> AsyncIterator[Received]:
    """Subscribe at QoS 1 (before anything is published); collect (jobwire-id, payload)."""
    subscribed = asyncio.Event()

    async def run(got: Received) -> None:
        async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe(topic, qos=1)
            subscribed.set()
            async for message in client.messages:
                props = message.properties
                pairs = dict(getattr(props, "UserProperty", None) or [])
                payload = message.payload
                body = payload if isinstance(payload, bytes) else str(payload).encode()
                got.messages.append((pairs.get("jobwire-id"), body))

    async with collecting(run) as got:
        await asyncio.wait_for(subscribed.wait(), 10)
        yield got


async def test_a_row_paho_cannot_pack_is_set_aside_and_the_others_are_sent(
    mosquitto: Mosquitto,
) -> None:
    # A header value past MQTT's 65,535-byte strings: paho raised struct.error out of
    # publish, the relay released the batch as "relay stopped" without charging a try,
    # and every row from the bad one on waited for good.
    topic = f"jw-out/{uuid.uuid4().hex[:8]}"
    cfg = MqttOutput.model_validate(
        {"type": "mqtt", "url": f"mqtt://127.0.0.1:{mosquitto.port}", "topic": topic}
    )
    rows = [
        OutboxRow(1, 7, 1, None, {}, b"one"),
        OutboxRow(2, 7, 2, None, {"big": "x" * 70_000}, b"two"),
        OutboxRow(3, 7, 3, None, {}, b"three"),
    ]
    async with mqtt_consumer(mosquitto.port, topic) as got:
        publisher = MqttPublisher("out", cfg)
        await publisher.connect()
        try:
            result = await publisher.publish(rows, 10)
        finally:
            await publisher.close()

        async def both_arrived() -> bool:
            return len(got.messages) >= 2

        await wait_for(both_arrived, timeout=10, what="the two good rows")
    assert result.confirmed == frozenset({1, 3})
    assert result.permanent == frozenset({2})
    assert result.error is not None and "65535" in result.error
    assert sorted(body for _, body in got.messages) == [b"one", b"three"]
