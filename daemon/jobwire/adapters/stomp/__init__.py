"""STOMP 1.2: ``StompAdapter`` and its settings, ``StompSource``.

The model is imported directly (the registry needs it, and it imports no broker library);
the adapter is imported on first use, so importing this package loads no broker library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobwire.adapters.stomp.config import StompSource

if TYPE_CHECKING:
    from jobwire.adapters.stomp.adapter import StompAdapter

__all__ = ["StompAdapter", "StompSource"]

_LAZY = {"StompAdapter": ".adapter"}


def __getattr__(name: str) -> Any:
    """Import the adapter side (and its broker library) only when it is asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name], __name__), name)
