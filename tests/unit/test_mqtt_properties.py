"""The MQTT output's fast PUBLISH properties pack to the very bytes paho's own class does."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from jobwire.adapters.mqtt import output

CASES = [
    ([("jobwire-id", "jobwire-1-1")], None),
    ([("a", "1"), ("a", "2"), ("jobwire-id", "jobwire-9-3")], "application/json"),
    ([("ünïcode", "välue ✓"), ("jobwire-id", "jobwire-row-7")], "text/plain; charset=utf-8"),
    ([("k" * 300, "v" * 5000), ("jobwire-id", "x")], None),
]


def _paho(user: list[tuple[str, str]], content_type: str | None) -> bytes:
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = user
    if content_type is not None:
        properties.ContentType = content_type
    return bytes(properties.pack())


@pytest.mark.parametrize(("user", "content_type"), CASES)
def test_the_fast_properties_pack_like_pahos(user, content_type) -> None:
    if not output.FAST_PROPERTIES:
        pytest.skip("this paho release keeps paho's own properties")
    fast = output.publish_properties(list(user), content_type)
    assert isinstance(fast, output._PublishProperties)
    assert bytes(fast.pack()) == _paho(list(user), content_type)


def test_correlation_data_set_after_packs_like_pahos() -> None:
    fast = output.publish_properties([("jobwire-id", "jobwire-1-0")], "application/json")
    fast.CorrelationData = b"\x00\xffcorr"
    plain = Properties(PacketTypes.PUBLISH)
    plain.UserProperty = [("jobwire-id", "jobwire-1-0")]
    plain.ContentType = "application/json"
    plain.CorrelationData = b"\x00\xffcorr"
    assert bytes(fast.pack()) == bytes(plain.pack())
