"""Broker adapters: one package per broker (adapter, config, ...), each turning deliveries
into Messages; ``registry`` lists them."""

from __future__ import annotations

from typing import TYPE_CHECKING

# The adapters' config modules build on jobwire.config, which imports them (through the
# registry) once its shared classes exist: load it first, whichever module is asked for.
import jobwire.config  # noqa: F401

if TYPE_CHECKING:
    from jobwire.adapters.base import Adapter, OffsetReader
    from jobwire.config import SourceBase


def build_adapter(source: SourceBase, offset_reader: OffsetReader | None = None) -> Adapter:
    """The adapter for one configured source; its broker library is imported only here.

    ``offset_reader`` gives log consumers (Kafka) the positions stored with the jobs. The
    type's setup hook (AMQP: its fast frame path) runs first; it is idempotent.
    """
    from jobwire.adapters.registry import SOURCES, resolve

    kind = getattr(source, "type", None)
    entry = SOURCES.get(kind) if isinstance(kind, str) else None
    if entry is None or not isinstance(source, entry.model):
        raise ValueError(f"no adapter for source type {kind!r}")
    if entry.setup is not None:
        resolve(entry.setup)()
    adapter: Adapter = resolve(entry.factory)(source, offset_reader)
    return adapter
