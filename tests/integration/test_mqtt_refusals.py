"""An MQTT source whose subscription the broker refuses is down, saying why. A scripted
broker answers the SUBACK with the code the test asks for (Mosquitto refuses a subscribe
only through its dynamic-security plugin; a drill found the source "up", /readyz 200, and
nothing consumed)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from jobwire.adapters.base import SourceState
from jobwire.adapters.mqtt import MqttSource
from jobwire.adapters.mqtt.adapter import MqttAdapter
from jobwire.models import Message
from tests.support.mqtt_scripted import SUBSCRIBE, scripted_broker
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


def subacks(code: int) -> Callable[[int, bytes], bytes | None]:
    """Answer every SUBSCRIBE with ``code``: its packet id, no properties, the code."""

    def answer(kind: int, body: bytes) -> bytes | None:
        return bytes([0x90, 4]) + body[:2] + bytes([0, code]) if kind == SUBSCRIBE else None

    return answer


@pytest.mark.parametrize(("code", "reason"), [(0x87, "Not authorized"), (0x00, None)])
async def test_a_refused_subscription_leaves_the_source_down_with_the_reason(
    code: int, reason: str | None
) -> None:
    async with scripted_broker(subacks(code)) as port:
        cfg = MqttSource.model_validate(
            {
                "name": "sensors",
                "type": "mqtt",
                "url": f"mqtt://127.0.0.1:{port}",
                "topics": ["drill/#"],
                "client_id": "jw-refusal-test",
                "route": {"handler": "noop"},
            }
        )
        adapter = MqttAdapter(cfg)
        got: list[Message] = []
        task = asyncio.create_task(adapter.run(got.append))
        try:
            if reason is None:  # granted: up, as before
                await wait_for(lambda: adapter.state == SourceState.UP, what="the source up")
            else:
                await wait_for(lambda: adapter.last_error is not None, what="the refusal seen")
                assert adapter.state != SourceState.UP
                assert reason in adapter.last_error and "drill/#" in adapter.last_error
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
