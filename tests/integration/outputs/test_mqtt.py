"""The MQTT output: the output suite on a private Mosquitto (MQTT 5, QoS 1)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest

from tests.integration.outputs.base import OutputSuite, Received, collecting
from tests.support.mqtt import Mosquitto

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
