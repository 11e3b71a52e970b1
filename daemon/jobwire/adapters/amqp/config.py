"""The ``type: amqp`` source's settings; no broker library here (the registry imports it)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from jobwire.config import (
    REPLY_MAX_ATTEMPTS,
    Duration,
    OutputBase,
    SourceBase,
    TlsConfig,
    reply_needs_jobs,
)


class AmqpSource(SourceBase):
    """A RabbitMQ (AMQP 0-9-1) queue consumed with manual acks."""

    competing: ClassVar[bool] = True
    type: Literal["amqp"] = Field(description="RabbitMQ (AMQP 0-9-1).")
    url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/", description="The broker: amqp:// or amqps:// URL."
    )
    queue: str = Field(description="The queue consumed.")
    declare: bool = Field(
        True, description="Declare the queue (durable); false: it must exist already."
    )
    queue_type: Literal["classic", "quorum"] = Field(
        "classic", description="The type of a declared queue."
    )
    queue_arguments: dict[str, Any] = Field(
        default_factory=dict, description="Extra x-arguments for the declaration."
    )
    # Validated even when left out: on_invalid dead-letter needs it (see below).
    dead_letter_exchange: str | None = Field(
        None,
        validate_default=True,
        description="The queue's x-dead-letter-exchange, where dead-letter sends poison.",
    )
    dead_letter_routing_key: str | None = Field(
        None, description="The queue's x-dead-letter-routing-key."
    )
    exchange: str | None = Field(
        None, description="Declare this exchange and bind the queue to it."
    )
    exchange_type: Literal["direct", "topic", "fanout", "headers"] = Field(
        "direct", description="The type of the declared exchange."
    )
    routing_keys: list[str] = Field(
        default_factory=list, description="Binding keys (default: the queue name)."
    )
    # 500: with the intake pacing itself to the pool, a deeper prefetch is what lets a busy
    # pool find the next delivery already here (bench/defaults.py: 200 drained at 88% of
    # the best, 500 and 1,000 alike at it). Each holds its body in memory until stored:
    # lower it for large messages on a small machine.
    prefetch: int = Field(500, ge=1, le=65535, description="Unacknowledged deliveries at once.")
    heartbeat: Duration = Field(30.0, description="The AMQP heartbeat interval.")
    tls: TlsConfig | None = Field(None, description="TLS settings (with amqps://).")
    reply: bool = Field(
        False,
        description="Publish each finished job's result (or error) to the request's reply_to "
        "queue with its correlation_id, through the outbox.",
    )

    @field_validator("url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        if not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must be an amqp:// or amqps:// URL")
        return value

    @model_validator(mode="after")
    def _reply_needs_jobs(self) -> AmqpSource:
        reply_needs_jobs(self)
        return self

    def reply_output(self) -> AmqpOutput:
        """The implicit output of its replies: the default exchange on its own connection
        settings (the routing key is each reply's address)."""
        return AmqpOutput(
            type="amqp",
            url=self.url,
            heartbeat=self.heartbeat,
            tls=self.tls,
            mandatory=True,
            max_attempts=REPLY_MAX_ATTEMPTS,
        )

    # A field validator, not a model one, so that the problem names this key.
    @field_validator("dead_letter_exchange")
    @classmethod
    def _dead_letter_target(cls, value: str | None, info: ValidationInfo) -> str | None:
        arguments = info.data.get("queue_arguments") or {}
        if (
            info.data.get("on_invalid") == "dead-letter"
            and value is None
            and arguments.get("x-dead-letter-exchange") is None
        ):
            # RabbitMQ drops a message rejected on a queue without a dead-letter exchange.
            raise ValueError(
                "on_invalid dead-letter needs a dead-letter exchange, or rejected messages "
                "are dropped: set dead_letter_exchange (or x-dead-letter-exchange in "
                "queue_arguments); with declare: false name the one the queue was declared "
                "with (by arguments or policy), which jobwire cannot read"
            )
        return value


class AmqpOutput(OutputBase):
    """An exchange handlers publish to, with publisher confirms (persistent messages)."""

    type: Literal["amqp"] = Field(description="RabbitMQ (AMQP 0-9-1).")
    url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/", description="The broker: amqp:// or amqps:// URL."
    )
    exchange: str = Field("", description="The exchange published to; empty: the default one.")
    routing_key: str = Field(
        "", description="The routing key (with the default exchange: the queue's name)."
    )
    # Unroutable messages are returned rather than dropped: the rows wait and the pending
    # count grows until the binding is fixed, instead of messages vanishing.
    mandatory: bool = Field(
        True, description="Refuse a message no queue receives (it waits in the outbox)."
    )
    heartbeat: Duration = Field(30.0, description="The AMQP heartbeat interval.")
    tls: TlsConfig | None = Field(None, description="TLS settings (with amqps://).")

    @field_validator("url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        if not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must be an amqp:// or amqps:// URL")
        return value
