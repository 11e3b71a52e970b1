"""Build worker pools for tests, with fast timings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobwire.config import Config
from jobwire.handlers import Handler, HandlerRegistry
from jobwire.store.base import JobStore
from jobwire.worker import WorkerPool


def fast_config(**overrides: Any) -> Config:
    """A config with short poll, lease and retry timings; sections merge with ``overrides``."""
    data: dict[str, Any] = {
        "workers": {
            "concurrency": 8,
            "poll_interval": "100ms",
            "lease": "3s",
            "shutdown_timeout": "2s",
        },
        "retry": {"max_attempts": 3, "base": "10ms", "factor": 2, "max": "50ms", "jitter": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Config.model_validate(data)


def make_pool(
    store: JobStore,
    handlers: Mapping[str, Handler] | None = None,
    config: Config | None = None,
    worker_id: str | None = None,
) -> WorkerPool:
    """A pool with the built-ins plus ``handlers``."""
    return WorkerPool(
        store, HandlerRegistry(handlers or {}), config or fast_config(), worker_id=worker_id
    )
