"""The ``type: mqtt`` source's settings; no broker library here (the registry imports it)."""

from __future__ import annotations

import socket
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from jobwire.config import (
    REPLY_MAX_ATTEMPTS,
    Duration,
    OutputBase,
    SourceBase,
    TlsConfig,
    no_requeue,
    reply_needs_jobs,
)
from jobwire.redaction import SECRET


def default_client_id(source_name: str) -> str:
    """jobwire-<host>-<source>: stable across restarts, distinct between hosts."""
    return f"jobwire-{socket.gethostname()}-{source_name}"[:128]


def default_output_client_id(output_name: str) -> str:
    """jobwire-out-<host>-<output>: an MQTT output's client id when none is configured."""
    return f"jobwire-out-{socket.gethostname()}-{output_name}"[:128]


class MqttSource(SourceBase):
    """MQTT topics (Mosquitto, EMQX, HiveMQ) at QoS 1, acknowledged only after the commit."""

    type: Literal["mqtt"] = Field(description="MQTT 5 or 3.1.1.")
    url: str = Field(
        "mqtt://127.0.0.1:1883",
        description="The broker: mqtt:// or mqtts:// URL, user:password@ allowed.",
    )
    topics: list[str] = Field(min_length=1, description="Topic filters (+ and # allowed).")
    # 2 is refused (see _qos): a message published at QoS 2 is delivered at 1 and kept as
    # any other.
    qos: Literal[1] = Field(1, description="The subscription's QoS (1; QoS 2 is refused).")
    protocol: Literal["5", "3.1.1"] = Field(
        "5",
        description="The MQTT protocol version.",
        # A bare 5 is accepted too (the validator below turns it into "5").
        json_schema_extra={"enum": ["5", "3.1.1", 5], "type": ["string", "integer"]},
    )
    # Stable per instance, so the broker keeps the session (and what is queued for it)
    # across restarts.
    client_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="The MQTT client id; null: jobwire-<host>-<source name>.",
    )
    shared_group: str | None = Field(
        None,
        pattern=r"^[^/+#]+$",
        description="Subscribe as $share/<group>/<topic>: the instances of a group split "
        "the messages.",
    )
    username: str | None = Field(None, description="The user name.")
    password: str | None = Field(
        None, json_schema_extra=SECRET, description="The password (secret)."
    )
    session_expiry: Duration = Field(
        7 * 86400.0, description="MQTT 5: how long the broker keeps the session while we are away."
    )
    keepalive: Duration = Field(30.0, description="The MQTT keepalive interval.")
    prefetch: int = Field(
        200,
        ge=1,
        le=65535,
        description="MQTT 5 Receive Maximum: unacknowledged messages the broker may send at once.",
    )
    qos0_backlog_bytes: int = Field(
        67_108_864,
        ge=65_536,
        description="QoS 0 messages received and not yet taken (while the source is held, "
        "or slower than its publishers) cost at most this many bytes (each its payload and "
        "1 KiB); past it a QoS 0 message is discarded, counted and logged. QoS 1 messages "
        "are bounded by prefetch and never discarded.",
    )
    tls: TlsConfig | None = Field(None, description="TLS settings (with mqtts://).")
    reply: bool = Field(
        False,
        description="MQTT 5: publish each finished job's result (or error) to the request's "
        "response topic with its correlation data, through the outbox.",
    )

    @field_validator("qos", mode="before")
    @classmethod
    def _qos(cls, value: Any) -> Any:
        # paho confirms a QoS 2 message (PUBREC) as it arrives, before jobwire has stored
        # it: after that the broker never sends it again, so a crash before the commit lost
        # it, and after a reconnect the broker waited for a release no one answered, one
        # receive slot per message, until the source stalled (found by a drill).
        if value == 2:
            raise ValueError(
                "2 is not supported: paho confirms a QoS 2 message before jobwire has stored "
                "it, so a crash would lose it; use 1 (a route's dedup key makes a redelivered "
                "message one job)"
            )
        return value

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) else value

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, value: str) -> str:
        if not value.startswith(("mqtt://", "mqtts://")):
            raise ValueError("must be an mqtt:// or mqtts:// URL")
        return value

    @model_validator(mode="after")
    def _mqtt_rules(self) -> MqttSource:
        no_requeue(self, "MQTT redelivers an unacknowledged message only on reconnect")
        if self.reply and self.protocol != "5":
            raise ValueError(
                "reply needs protocol 5: MQTT 3.1.1 carries no response topic or correlation data"
            )
        reply_needs_jobs(self)
        return self

    def reply_output(self) -> MqttOutput:
        """The implicit output of its replies, on its own connection settings (the topic is
        each reply's response topic; the client id its own with ``-reply``)."""
        return MqttOutput(
            type="mqtt",
            url=self.url,
            topic="reply",  # unused: every reply names its own topic
            protocol="5",
            # The tail kept when cut: it holds a worker process's -<i> (workers.processes),
            # without which the processes' reply clients would share one id.
            client_id=None if self.client_id is None else f"{self.client_id[-122:]}-reply",
            username=self.username,
            password=self.password,
            keepalive=self.keepalive,
            tls=self.tls,
            max_attempts=REPLY_MAX_ATTEMPTS,
        )


class MqttOutput(OutputBase):
    """An MQTT topic handlers publish to at QoS 1 (sent once the broker's PUBACK came)."""

    type: Literal["mqtt"] = Field(description="MQTT 5 or 3.1.1.")
    url: str = Field(
        "mqtt://127.0.0.1:1883",
        description="The broker: mqtt:// or mqtts:// URL, user:password@ allowed.",
    )
    topic: str = Field(min_length=1, pattern=r"^[^+#]+$", description="The topic (no wildcards).")
    retain: bool = Field(False, description="Publish with the retain flag.")
    protocol: Literal["5", "3.1.1"] = Field(
        "5",
        description="The MQTT protocol version (3.1.1 carries no jobwire-id property).",
        json_schema_extra={"enum": ["5", "3.1.1", 5], "type": ["string", "integer"]},
    )
    client_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="The MQTT client id; null: jobwire-out-<host>-<output name>.",
    )
    username: str | None = Field(None, description="The user name.")
    password: str | None = Field(
        None, json_schema_extra=SECRET, description="The password (secret)."
    )
    keepalive: Duration = Field(30.0, description="The MQTT keepalive interval.")
    tls: TlsConfig | None = Field(None, description="TLS settings (with mqtts://).")

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) else value

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, value: str) -> str:
        if not value.startswith(("mqtt://", "mqtts://")):
            raise ValueError("must be an mqtt:// or mqtts:// URL")
        return value
