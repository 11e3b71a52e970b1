"""Reply rows as the publishers read them: the address from the jobwire-reply-to header (the
key of a row written before migration 0015), the headers turned into the protocol's own
properties, and the MQTT rows set aside before paho could raise for them."""

from __future__ import annotations

from datetime import UTC, datetime

import paho.mqtt.client as paho
import pytest

from jobwire.adapters.mqtt import reply as mqtt_reply
from jobwire.adapters.mqtt.config import MqttSource
from jobwire.config import Config
from jobwire.effects import OutboxRow
from jobwire.models import Job, JobStatus
from jobwire.reply import protocol_headers, reply_message, reply_to


def row(key: str | None, headers: dict[str, str], body: bytes = b"{}") -> OutboxRow:
    """A reply row as a relay claims it."""
    return OutboxRow(7, 3, 0, key, headers, body)


def test_a_reply_message_carries_its_address_as_a_header() -> None:
    """What the memory store writes in an unkeyed row (as migration 0015's trigger)."""
    at = datetime.now(UTC)
    job = Job(3, "rpc", "default", JobStatus.SUCCEEDED, 0, 1, 1, {}, at, at, result={"total": 1})
    job.reply = {"output": "reply:rpc", "to": "amq.gen-1", "correlation": "c-1"}
    headers, body = reply_message(job)
    assert headers == {
        "jobwire-status": "succeeded",
        "content-type": "application/json",
        "jobwire-reply-to": "amq.gen-1",
        "jobwire-correlation": "c-1",
    }
    assert body == b'{"total": 1}'


def test_the_address_is_the_header_else_the_key_of_an_older_row() -> None:
    assert reply_to(row(None, {"jobwire-reply-to": "amq.gen-1"})) == "amq.gen-1"
    assert reply_to(row("amq.gen-0", {})) == "amq.gen-0"  # written before migration 0015
    assert reply_to(row("amq.gen-0", {"jobwire-reply-to": "amq.gen-1"})) == "amq.gen-1"
    assert reply_to(row(None, {})) is None
    headers = {
        "jobwire-status": "succeeded",
        "content-type": "application/json",
        "jobwire-reply-to": "amq.gen-1",
        "jobwire-correlation": "c-1",
    }
    sent, correlation = protocol_headers(row(None, headers))
    assert sent == {"jobwire-status": "succeeded", "content-type": "application/json"}
    assert correlation == "c-1"


def reply_publisher() -> mqtt_reply.MqttReplyPublisher:
    """The reply publisher of a reply: true MQTT 5 source (not connected)."""
    config = Config.model_validate(
        {
            "handlers": {"rpc": "tests.integration.outputs.handlers:rpc"},
            "sources": [
                {
                    "name": "rpc",
                    "type": "mqtt",
                    "url": "mqtt://127.0.0.1",
                    "topics": ["rpc"],
                    "protocol": "5",
                    "reply": True,
                    "route": {"handler": "rpc"},
                }
            ],
        }
    )
    source = config.sources[0]
    assert isinstance(source, MqttSource)
    return mqtt_reply.MqttReplyPublisher("reply:rpc", source.reply_output())


class Stop(Exception):
    """Raised where paho has sized a PUBLISH, to stop it there."""


def paho_remaining_length(publisher: mqtt_reply.MqttReplyPublisher, r: OutboxRow) -> int:
    """The remaining length paho gives a row's PUBLISH (what it bounds), without a
    connection: its packing stops there."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    seen: list[int] = []

    def record(packet: bytearray, remaining_length: int) -> bytearray:
        seen.append(remaining_length)
        raise Stop

    client._sock = object()  # type: ignore[assignment]  # "connected"
    client._pack_remaining_length = record  # type: ignore[method-assign]
    try:
        with pytest.raises(Stop):
            client.publish(publisher._topic(r), r.body, 1, False, publisher._properties(r))
    finally:
        client._sock = None
    return seen[0]


@pytest.mark.parametrize("correlation", ["AP8=", "not base64!"])
def test_an_mqtt_reply_past_the_packet_bound_is_refused_before_paho(
    correlation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """paho raises for a PUBLISH whose topic, properties and payload together pass MQTT's
    bound, not only for a payload past it: the check counts them as paho does, so no row
    ever makes publish() raise."""
    publisher = reply_publisher()
    headers = {
        "jobwire-status": "succeeded",
        "content-type": "application/json",
        "jobwire-reply-to": "replies/é/1",
        "jobwire-correlation": correlation,
        "x-extra": "ü" * 50,
    }
    r = row(None, headers, b"x" * 1000)
    size = paho_remaining_length(publisher, r)
    monkeypatch.setattr(mqtt_reply, "MAX_PACKET", size)
    assert publisher.unsendable(r) is None
    monkeypatch.setattr(mqtt_reply, "MAX_PACKET", size - 1)
    assert "exceeds MQTT's packet bound" in (publisher.unsendable(r) or "")


@pytest.mark.parametrize(
    ("key", "headers", "why"),
    [
        (None, {"jobwire-reply-to": "a/+"}, "wildcard"),
        ("a/#", {}, "wildcard"),
        (None, {}, "is empty"),
        ("fine", {"jobwire-reply-to": ""}, "is empty"),
        (None, {"jobwire-reply-to": "x" * 65_536}, "longer than 65535 bytes"),
    ],
)
def test_an_mqtt_reply_to_an_unusable_topic_is_refused_before_paho(
    key: str | None, headers: dict[str, str], why: str
) -> None:
    problem = reply_publisher().unsendable(row(key, headers))
    assert problem is not None and problem.startswith("response topic") and why in problem
