"""What every aiokafka client of jobwire is given: servers, identity, SASL and TLS."""

from __future__ import annotations

from typing import Any

from jobwire.adapters.base import tls_context
from jobwire.adapters.kafka.config import KafkaOutput, KafkaSource


def client_options(cfg: KafkaSource | KafkaOutput) -> dict[str, Any]:
    """The connection keyword arguments of an AIOKafkaConsumer or AIOKafkaProducer."""
    options: dict[str, Any] = {
        "bootstrap_servers": cfg.bootstrap_servers,
        "security_protocol": cfg.security_protocol,
    }
    if cfg.client_id:
        options["client_id"] = cfg.client_id
    if cfg.sasl_mechanism:
        options["sasl_mechanism"] = cfg.sasl_mechanism
        options["sasl_plain_username"] = cfg.sasl_username
        options["sasl_plain_password"] = cfg.sasl_password
    if cfg.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = tls_context(cfg.tls, required=True)
    return options
