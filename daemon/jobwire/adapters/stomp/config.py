"""The ``type: stomp`` source's settings; no broker library here (the registry imports it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from jobwire.config import Duration, SourceBase, TlsConfig
from jobwire.redaction import SECRET


class StompSource(SourceBase):
    """A STOMP 1.2 destination (RabbitMQ's STOMP plugin, ActiveMQ), consumed with client acks."""

    type: Literal["stomp"]
    host: str = "127.0.0.1"
    port: int = Field(61613, ge=1, le=65535)
    vhost: str = "/"  # STOMP's host header; RabbitMQ reads it as the vhost
    username: str | None = "guest"
    password: str | None = Field("guest", json_schema_extra=SECRET)
    destination: str = Field(pattern=r"^/")
    flavor: Literal["rabbitmq", "activemq"] = "rabbitmq"
    prefetch: int = Field(200, ge=1, le=65535)
    heartbeat: Duration = 10.0
    # For /topic/ destinations: a durable subscription under this stable name.
    durable_name: str | None = None
    # on_invalid dead-letter: poison is SENT here (with a receipt) before the original is
    # ACKed. Validated even when left out: dead-letter needs it.
    dead_letter_destination: str | None = Field(None, pattern=r"^/", validate_default=True)
    tls: TlsConfig | None = None

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
