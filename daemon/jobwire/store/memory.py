"""The store in memory: PostgreSQL's semantics (tests/integration/test_store_contract.py runs
the same tests on both), for fast unit tests of the core."""

from __future__ import annotations

from jobwire.store.memory_admin import MemoryAdmin, MemoryLock, MemorySchedules
from jobwire.store.memory_jobs import MemoryJobs
from jobwire.store.memory_outbox import MemoryOutbox
from jobwire.store.memory_outbox_admin import MemoryOutboxAdmin

__all__ = ["MemoryLock", "MemoryStore"]


class MemoryStore(MemoryJobs, MemoryOutbox, MemoryOutboxAdmin, MemorySchedules, MemoryAdmin):
    """Every store role held in dicts; one process, no durability."""
