"""The store in memory: PostgreSQL's semantics (tests/integration/test_store_contract.py runs
the same tests on both), for fast unit tests of the core."""

from __future__ import annotations

from jobwire.store.memory_admin import MemoryAdmin, MemoryLock, MemorySchedules
from jobwire.store.memory_jobs import MemoryJobs

__all__ = ["MemoryLock", "MemoryStore"]


class MemoryStore(MemoryJobs, MemorySchedules, MemoryAdmin):
    """Every store role held in dicts; one process, no durability."""
