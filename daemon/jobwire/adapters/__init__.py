"""Broker adapters: one module per broker, each turning deliveries into Messages."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobwire.adapters.base import Adapter, OffsetReader
    from jobwire.config import SourceBase


def build_adapter(source: SourceBase, offset_reader: OffsetReader | None = None) -> Adapter:
    """The adapter for one configured source; its broker library is imported only here.

    ``offset_reader`` gives log consumers (Kafka) the positions stored with the jobs.
    """
    kind = getattr(source, "type", None)
    if kind == "amqp":
        from jobwire.adapters.amqp import AmqpAdapter
        from jobwire.config import AmqpSource

        assert isinstance(source, AmqpSource)
        return AmqpAdapter(source)
    if kind == "stomp":
        from jobwire.adapters.stomp import StompAdapter
        from jobwire.config import StompSource

        assert isinstance(source, StompSource)
        return StompAdapter(source)
    if kind == "kafka":
        from jobwire.adapters.kafka import KafkaAdapter
        from jobwire.config import KafkaSource

        assert isinstance(source, KafkaSource)
        return KafkaAdapter(source, offset_reader)
    if kind == "mqtt":
        from jobwire.adapters.mqtt import MqttAdapter
        from jobwire.config import MqttSource

        assert isinstance(source, MqttSource)
        return MqttAdapter(source)
    raise ValueError(f"no adapter for source type {kind!r}")
