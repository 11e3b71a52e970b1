"""jobwire: broker messages in, durable PostgreSQL jobs out, run by an asyncio worker pool."""

__version__ = "0.1.0"

from jobwire.client import Client, SyncClient
from jobwire.exceptions import Reject, Retry
from jobwire.handlers import JobContext
from jobwire.models import JobSpec

__all__ = [
    "Client",
    "JobContext",
    "JobSpec",
    "Reject",
    "Retry",
    "SyncClient",
    "__version__",
]
