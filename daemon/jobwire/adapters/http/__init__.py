"""HTTP webhooks: ``HttpAdapter`` and its settings, ``HttpSource``.

The model is imported directly (the registry needs it); the adapter is imported on first
use, like the broker adapters' (it needs no broker library, only aiohttp).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobwire.adapters.http.config import HttpSource

if TYPE_CHECKING:
    from jobwire.adapters.http.adapter import HttpAdapter

__all__ = ["HttpAdapter", "HttpSource"]

_LAZY = {"HttpAdapter": ".adapter"}


def __getattr__(name: str) -> Any:
    """Import the adapter side only when it is asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name], __name__), name)
