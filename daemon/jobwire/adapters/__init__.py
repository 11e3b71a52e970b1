"""Broker adapters: one module per broker, each turning deliveries into Messages."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobwire.adapters.base import Adapter
    from jobwire.config import SourceBase


def build_adapter(source: SourceBase) -> Adapter:
    """The adapter for one configured source; its broker library is imported only here."""
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
    raise ValueError(f"no adapter for source type {kind!r}")
