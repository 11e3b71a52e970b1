"""MQTT: ``MqttAdapter`` and its settings, ``MqttSource``.

The model is imported directly (the registry needs it, and it imports no broker library);
the adapter is imported on first use, so importing this package loads no broker library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobwire.adapters.mqtt.config import MqttSource

if TYPE_CHECKING:
    from jobwire.adapters.mqtt.adapter import MqttAdapter

__all__ = ["MqttAdapter", "MqttSource"]

_LAZY = {"MqttAdapter": ".adapter"}


def __getattr__(name: str) -> Any:
    """Import the adapter side (and its broker library) only when it is asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name], __name__), name)
