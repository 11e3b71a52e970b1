"""The ``type: kafka`` source's settings; no broker library here (the registry imports it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from jobwire.config import Duration, SourceBase, TlsConfig, no_requeue
from jobwire.redaction import SECRET


class KafkaSource(SourceBase):
    """Kafka topics read by a consumer group; offsets kept in PostgreSQL with the job rows."""

    type: Literal["kafka"]
    bootstrap_servers: str | list[str] = "127.0.0.1:9092"
    topics: list[str] = Field(min_length=1)
    group_id: str = "jobwire"
    client_id: str | None = None
    # A first deploy must not skip what was published before it: earliest.
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # read_committed: messages of aborted producer transactions never become jobs.
    isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"
    max_records: int = Field(500, ge=1, le=100_000)  # per getmany call
    # Deliveries taken but not yet stored; above it the partitions are paused (Kafka has
    # no prefetch, so this is what bounds memory).
    max_in_flight: int = Field(5000, ge=1)
    session_timeout: Duration = 10.0
    heartbeat_interval: Duration = 3.0
    max_poll_interval: Duration = 300.0
    # How long a rebalance waits for the in-flight deliveries of revoked partitions to be
    # stored before it lets them go (the next owner then reads them again; dedup absorbs it).
    revoke_timeout: Duration = 10.0
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = Field(None, json_schema_extra=SECRET)
    tls: TlsConfig | None = None

    @model_validator(mode="after")
    def _kafka_rules(self) -> KafkaSource:
        no_requeue(self, "a Kafka partition is read in order and has no per-message NACK")
        if self.sasl_mechanism and not self.security_protocol.startswith("SASL"):
            raise ValueError("sasl_mechanism needs security_protocol SASL_PLAINTEXT or SASL_SSL")
        return self
