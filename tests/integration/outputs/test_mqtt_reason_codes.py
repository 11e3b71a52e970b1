"""The MQTT output reads the PUBACK's reason code: an MQTT 5 broker's refusal (>= 0x80) is
not a confirmation. A scripted broker answers each PUBLISH with the code the test asks for
(Mosquitto has no switch to refuse a publish on demand)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from jobwire.adapters.mqtt.config import MqttOutput
from jobwire.adapters.mqtt.output import MqttPublisher
from jobwire.effects import OutboxRow
from tests.support.mqtt_scripted import PUBLISH, scripted_broker

pytestmark = pytest.mark.timeout(60)


def pubacks(codes: list[int]) -> Callable[[int, bytes], bytes | None]:
    """PUBACK the n-th PUBLISH (QoS 1) with ``codes[n]``."""
    answers = iter(codes)

    def answer(kind: int, body: bytes) -> bytes | None:
        if kind != PUBLISH:
            return None
        # PUBLISH (QoS 1): topic, packet id, properties, payload
        topic_length = int.from_bytes(body[:2], "big")
        mid = body[2 + topic_length : 4 + topic_length]
        return bytes([0x40, 4]) + mid + bytes([next(answers), 0])

    return answer


async def test_a_failure_puback_is_not_a_confirmation() -> None:
    async with scripted_broker(pubacks([0x00, 0x87, 0x97, 0x10])) as port:
        cfg = MqttOutput.model_validate(
            {"type": "mqtt", "url": f"mqtt://127.0.0.1:{port}", "topic": "t", "protocol": "5"}
        )
        publisher = MqttPublisher("out", cfg)
        await publisher.connect()
        try:
            rows = [OutboxRow(i, 7, i, None, {}, b"x") for i in (1, 2, 3, 4)]
            result = await publisher.publish(rows, 10)
        finally:
            await publisher.close()
    # 0x10 (no matching subscribers) is a success code: the broker took the message.
    assert result.confirmed == frozenset({1, 4})
    assert result.error is not None and "0x87" in result.error
