"""Sending set-aside outbox messages again, or discarding them: one place for the CLI, the
admin API and the dashboard, so each checks its input the same way and writes the same
audit row."""

from __future__ import annotations

from collections.abc import Sequence

from jobwire.storable import problem_of
from jobwire.store.base import AdminStore, AuditEntry

MAX_OUTPUT_NAME = 200
BIGINT_MAX = 2**63 - 1  # a message id is a PostgreSQL bigint
MAX_IDS = 10_000  # ids named in one call (all of an output's: name none)
AUDITED_IDS = 100  # ids kept in the audit row's detail; the count is always whole


class OutboxRefused(ValueError):
    """An output name or an id list an operator's call cannot use."""


def check(output: str, ids: Sequence[int] | None) -> None:
    """Refuse a name no output can have, and an id list that is empty or too long.

    Any other name is allowed, also one the config no longer lists: its messages stay in
    the outbox with no relay, and an operator may want them discarded."""
    if not output.strip():
        raise OutboxRefused("an output name cannot be empty")
    if len(output) > MAX_OUTPUT_NAME:
        raise OutboxRefused(f"an output name is at most {MAX_OUTPUT_NAME} characters")
    problem = problem_of(output)
    if problem is not None:  # no output can have it, and the store could not compare it
        raise OutboxRefused(f"the output name {problem}")
    if ids is not None and any(not 1 <= i <= BIGINT_MAX for i in ids):
        raise OutboxRefused(f"a message id is from 1 to {BIGINT_MAX}")
    if ids is not None and not ids:
        raise OutboxRefused("no message id given (name none to act on all set aside)")
    if ids is not None and len(ids) > MAX_IDS:
        raise OutboxRefused(f"at most {MAX_IDS:,} ids at once (name none for all)")


async def resend(
    store: AdminStore, output: str, ids: Sequence[int] | None, actor: str, role: str = "admin"
) -> list[int]:
    """Hand ``output``'s set-aside messages (``ids``, or all) back to its relay; audited.
    Returns the ids handed back (ids that are not set aside are left alone)."""
    check(output, ids)
    done = await store.resend_set_aside(output, ids)
    await _audit(store, "outbox_resend", output, ids, done, actor, role)
    return done


async def discard(
    store: AdminStore, output: str, ids: Sequence[int] | None, actor: str, role: str = "admin"
) -> list[int]:
    """Delete ``output``'s set-aside messages (``ids``, or all), never sent; audited.
    Returns the ids deleted (ids that are not set aside are left alone)."""
    check(output, ids)
    done = await store.discard_set_aside(output, ids)
    await _audit(store, "outbox_discard", output, ids, done, actor, role)
    return done


async def _audit(
    store: AdminStore,
    action: str,
    output: str,
    asked: Sequence[int] | None,
    done: list[int],
    actor: str,
    role: str,
) -> None:
    detail = {
        "asked": "all set aside" if asked is None else len(asked),
        "ids": done[:AUDITED_IDS],
        "more": max(0, len(done) - AUDITED_IDS),
    }
    await store.record_audit(AuditEntry(actor, role, action, output, len(done), detail))
