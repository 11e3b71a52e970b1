"""jobwire: broker messages in, durable PostgreSQL jobs out, run by an asyncio worker pool.

The public names load on first use, so that importing one part of jobwire (an adapter, the
models) does not import the store, asyncpg and the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from jobwire.client import Client, SyncClient
    from jobwire.exceptions import Reject, Retry
    from jobwire.handlers import JobContext
    from jobwire.models import JobSpec

_LAZY = {
    "Client": "jobwire.client",
    "SyncClient": "jobwire.client",
    "Reject": "jobwire.exceptions",
    "Retry": "jobwire.exceptions",
    "JobContext": "jobwire.handlers",
    "JobSpec": "jobwire.models",
}

__all__ = [
    "Client",
    "JobContext",
    "JobSpec",
    "Reject",
    "Retry",
    "SyncClient",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jobwire' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
