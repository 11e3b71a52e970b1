"""AMQP 0-9-1 (RabbitMQ): ``AmqpAdapter`` and its settings, ``AmqpSource``.

The model is imported directly (the registry needs it, and it imports no broker library);
the adapter and the fast path are imported on first use, so importing this package loads
no broker library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobwire.adapters.amqp.config import AmqpSource

if TYPE_CHECKING:
    from jobwire.adapters.amqp.adapter import AmqpAdapter
    from jobwire.adapters.amqp.frames import fast_path_reader, install_fast_path

__all__ = ["AmqpAdapter", "AmqpSource", "fast_path_reader", "install_fast_path"]

_LAZY = {"AmqpAdapter": ".adapter", "install_fast_path": ".frames", "fast_path_reader": ".frames"}


def __getattr__(name: str) -> Any:
    """Import the adapter side (and its broker library) only when it is asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name], __name__), name)
