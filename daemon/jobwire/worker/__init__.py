"""The worker pool: claim ready jobs, run their handlers, write outcomes back in batches.

Four parts share one slot count (state.py): the claimer takes ready jobs as slots free,
the executor runs them, the completer writes their outcomes in batches, and the lease
keeper renews leases and stops what it can no longer hold. WorkerPool puts them together
and is what the intake, the daemon and metrics talk to.
"""

from __future__ import annotations

from jobwire.worker.pool import WorkerPool
from jobwire.worker.state import PoolCounters, make_worker_id

__all__ = ["PoolCounters", "WorkerPool", "make_worker_id"]
