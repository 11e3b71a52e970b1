"""The ``type: stomp`` source's settings; no broker library here (the registry imports it)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from jobwire.config import Duration, OutputBase, SourceBase, TlsConfig
from jobwire.redaction import SECRET


class StompSource(SourceBase):
    """A STOMP 1.2 destination (RabbitMQ's STOMP plugin, ActiveMQ), consumed with client acks."""

    competing: ClassVar[bool] = True
    type: Literal["stomp"] = Field(description="STOMP 1.2 (RabbitMQ's plugin, ActiveMQ).")
    host: str = Field("127.0.0.1", description="The broker's host.")
    port: int = Field(61613, ge=1, le=65535, description="The broker's STOMP port.")
    vhost: str = Field("/", description="STOMP's host header; RabbitMQ reads it as the vhost.")
    username: str | None = Field("guest", description="The login.")
    password: str | None = Field(
        "guest", json_schema_extra=SECRET, description="The passcode (secret)."
    )
    destination: str = Field(
        pattern=r"^/", description="What is consumed: /queue/x, /amq/queue/x or /topic/x."
    )
    flavor: Literal["rabbitmq", "activemq"] = Field(
        "rabbitmq", description="Which broker's prefetch header to send."
    )
    prefetch: int = Field(200, ge=1, le=65535, description="Unacknowledged messages at once.")
    ack_mode: Literal["client", "client-individual"] | None = Field(
        None,
        description="client: one ACK settles a run of messages (fewer frames, less work for "
        "the broker); client-individual: one ACK per message. Default: client, or "
        "client-individual for a notify-mode route (a notification waiting for its job's row "
        "would hold back the ACKs of the messages after it).",
    )
    heartbeat: Duration = Field(10.0, description="Heart-beats, both ways.")
    durable_name: str | None = Field(
        None, description="For /topic/ destinations: a durable subscription under this name."
    )
    # Validated even when left out: dead-letter needs it.
    dead_letter_destination: str | None = Field(
        None,
        pattern=r"^/",
        validate_default=True,
        description="on_invalid dead-letter: poison is SENT here (with a receipt) before the "
        "original is ACKed.",
    )
    tls: TlsConfig | None = Field(None, description="TLS settings.")

    @property
    def effective_ack_mode(self) -> str:
        """The SUBSCRIBE's ack mode: the one set, else the route's default."""
        if self.ack_mode is not None:
            return self.ack_mode
        return "client-individual" if self.route.mode == "notify" else "client"

    # A field validator, not a model one, so that the problem names this key.
    @field_validator("dead_letter_destination")
    @classmethod
    def _dead_letter_target(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("on_invalid") == "dead-letter" and value is None:
            # A NACK without requeue is no dead-lettering over STOMP: RabbitMQ drops it.
            raise ValueError(
                "on_invalid dead-letter needs a destination for poison messages, such as "
                "/queue/background_jobs.dlq"
            )
        return value


class StompOutput(OutputBase):
    """A STOMP destination handlers publish to; each SEND waits for the broker's RECEIPT."""

    type: Literal["stomp"] = Field(description="STOMP 1.2 (RabbitMQ's plugin, ActiveMQ).")
    host: str = Field("127.0.0.1", description="The broker's host.")
    port: int = Field(61613, ge=1, le=65535, description="The broker's STOMP port.")
    vhost: str = Field("/", description="STOMP's host header; RabbitMQ reads it as the vhost.")
    username: str | None = Field("guest", description="The login.")
    password: str | None = Field(
        "guest", json_schema_extra=SECRET, description="The passcode (secret)."
    )
    destination: str = Field(
        pattern=r"^/", description="Where messages are SENT: /queue/x, /exchange/x/key, /topic/x."
    )
    persistent: bool = Field(True, description="Ask the broker to keep messages on disk.")
    tls: TlsConfig | None = Field(None, description="TLS settings.")
