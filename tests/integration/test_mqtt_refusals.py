"""An MQTT source whose subscription the broker refuses, or whose session another client
takes, is down, saying why. A scripted broker answers as the test asks (Mosquitto refuses a
subscribe only through its dynamic-security plugin, and 2.0.11 ends a taken session without
a reason code; a drill found the source "up", /readyz 200, and nothing consumed)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

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


def source_config(port: int) -> MqttSource:
    return MqttSource.model_validate(
        {
            "name": "sensors",
            "type": "mqtt",
            "url": f"mqtt://127.0.0.1:{port}",
            "topics": ["drill/#"],
            "client_id": "jw-takeover-test",
            "route": {"handler": "noop"},
        }
    )


async def test_a_session_taken_over_is_named_and_the_next_one_logged_as_lost() -> None:
    # Each SUBSCRIBE granted, then MQTT 5's DISCONNECT 0x8e (session taken over), as a
    # broker sends when another client connects with the same id. Two instances sharing a
    # client_id flapped for good with nothing naming the cause.
    def take_over(kind: int, body: bytes) -> bytes | None:
        if kind != SUBSCRIBE:
            return None
        return bytes([0x90, 4]) + body[:2] + bytes([0, 1]) + bytes([0xE0, 1, 0x8E])

    async with scripted_broker(take_over) as port:
        adapter = MqttAdapter(source_config(port))
        got: list[Message] = []
        with capture_logs() as logs:
            task = asyncio.create_task(adapter.run(got.append))
            try:
                await wait_for(
                    lambda: adapter.describe()["sessions_lost"] >= 1,
                    timeout=20,
                    what="a reconnection",
                )
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        error = adapter.last_error or ""
        assert "another client" in error and "jw-takeover-test" in error
        # The scripted broker never keeps a session: the first connection's is new, the
        # next one's is a lost session, said once per reconnection.
        assert [e["event"] for e in logs if e["event"].startswith("mqtt_session")][:2] == [
            "mqtt_session_new",
            "mqtt_session_lost",
        ]
