"""The ``type: kafka`` source's settings; no broker library here (the registry imports it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from jobwire.config import Duration, OutputBase, SourceBase, TlsConfig, no_requeue
from jobwire.redaction import SECRET


class KafkaSource(SourceBase):
    """Kafka topics read by a consumer group; offsets kept in PostgreSQL with the job rows."""

    type: Literal["kafka"] = Field(description="Apache Kafka (or a compatible broker).")
    bootstrap_servers: str | list[str] = Field(
        "127.0.0.1:9092", description="host:port of the brokers, or a list of them."
    )
    topics: list[str] = Field(min_length=1, description="The topics read.")
    group_id: str = Field("jobwire", description="The consumer group.")
    client_id: str | None = Field(None, description="The Kafka client id; null: the default.")
    # A first deploy must not skip what was published before it: earliest.
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a partition with no stored offset starts."
    )
    # read_committed: messages of aborted producer transactions never become jobs.
    isolation_level: Literal["read_committed", "read_uncommitted"] = Field(
        "read_committed", description="Which messages of producer transactions are read."
    )
    max_records: int = Field(500, ge=1, le=100_000, description="Records per fetch at most.")
    # Kafka has no prefetch, so this is what bounds memory.
    max_in_flight: int = Field(
        5000,
        ge=1,
        description="Deliveries taken but not yet stored; above it the partitions are paused.",
    )
    session_timeout: Duration = Field(
        10.0, description="The group drops a member silent this long."
    )
    heartbeat_interval: Duration = Field(3.0, description="Heartbeats to the group coordinator.")
    max_poll_interval: Duration = Field(
        300.0, description="The longest gap between fetches before the group drops us."
    )
    # The next owner reads what is let go again; dedup absorbs it.
    revoke_timeout: Duration = Field(
        10.0,
        description="How long a rebalance waits for the in-flight deliveries of revoked "
        "partitions to be stored.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How the connection is secured and authenticated."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="The SASL mechanism (with SASL_PLAINTEXT or SASL_SSL)."
    )
    sasl_username: str | None = Field(None, description="The SASL user name.")
    sasl_password: str | None = Field(
        None, json_schema_extra=SECRET, description="The SASL password (secret)."
    )
    tls: TlsConfig | None = Field(None, description="TLS settings (SSL or SASL_SSL).")

    @model_validator(mode="after")
    def _kafka_rules(self) -> KafkaSource:
        no_requeue(self, "a Kafka partition is read in order and has no per-message NACK")
        if self.sasl_mechanism and not self.security_protocol.startswith("SASL"):
            raise ValueError("sasl_mechanism needs security_protocol SASL_PLAINTEXT or SASL_SSL")
        return self


class KafkaOutput(OutputBase):
    """A Kafka topic handlers publish to: acks=all and the idempotent producer."""

    type: Literal["kafka"] = Field(description="Apache Kafka (or a compatible broker).")
    bootstrap_servers: str | list[str] = Field(
        "127.0.0.1:9092", description="host:port of the brokers, or a list of them."
    )
    topic: str = Field(min_length=1, description="The topic published to.")
    # Some Kafka-compatible brokers (tansu) lack InitProducerId: false for them.
    idempotent: bool = Field(
        True,
        description="The idempotent producer (no duplicates from its own retries); false "
        "only for a broker without it.",
    )
    client_id: str | None = Field(None, description="The Kafka client id; null: the default.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How the connection is secured and authenticated."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="The SASL mechanism (with SASL_PLAINTEXT or SASL_SSL)."
    )
    sasl_username: str | None = Field(None, description="The SASL user name.")
    sasl_password: str | None = Field(
        None, json_schema_extra=SECRET, description="The SASL password (secret)."
    )
    tls: TlsConfig | None = Field(None, description="TLS settings (SSL or SASL_SSL).")

    @model_validator(mode="after")
    def _kafka_rules(self) -> KafkaOutput:
        if self.sasl_mechanism and not self.security_protocol.startswith("SASL"):
            raise ValueError("sasl_mechanism needs security_protocol SASL_PLAINTEXT or SASL_SSL")
        return self
