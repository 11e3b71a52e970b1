"""Pausing and resuming a queue: one place for the CLI, the admin API and the dashboard, so
each checks the name the same way and writes the same audit row."""

from __future__ import annotations

from jobwire.limits import check_queue_name
from jobwire.store.base import AdminStore, AuditEntry


class QueueRefused(ValueError):
    """A queue name that cannot be paused (empty, too long, not printable)."""


async def set_paused(
    store: AdminStore, name: str, paused: bool, actor: str, role: str = "admin"
) -> bool:
    """Pause or resume ``name`` for every instance and audit it; False if it already was."""
    problem = check_queue_name(name)
    if problem is not None:
        raise QueueRefused(problem)
    changed = await store.set_queue_paused(name, paused, actor)
    action = "pause_queue" if paused else "resume_queue"
    await store.record_audit(
        AuditEntry(actor, role, action, name, int(changed), {"changed": changed})
    )
    return changed
