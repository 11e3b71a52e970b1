"""Reply-to's store contract, on PostgreSQL and in memory: a job with a reply address gets
one outbox row (n = 0, no key: the address in the header jobwire-reply-to) when it reaches a
final state, in the same write as that status; never for a retry, never for a job without
an address, never twice. Replies to one address are not held up by each other."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest

from jobwire.effects import OutboxRow, Published
from jobwire.models import JobSpec, JobStatus, Outcome
from jobwire.outbox import OutboxRelay
from jobwire.store.base import ClaimRequest
from jobwire.store.memory import MemoryStore
from jobwire.store.postgres import PostgresStore
from tests.support.waiting import wait_for

Store = Any  # either store: both have every role
OUTPUT = "reply:rpc"


def reply(to: str = "amq.gen-1", correlation: str | None = "c-1") -> dict[str, str]:
    """A reply address as the intake stores it."""
    address = {"output": OUTPUT, "to": to}
    if correlation is not None:
        address["correlation"] = correlation
    return address


async def started(store: Store, specs: list[JobSpec], lease: float = 30.0) -> list[int]:
    """The specs enqueued and claimed by worker "w"; their ids in order."""
    await store.enqueue_many(specs)
    jobs = await store.claim(ClaimRequest({"default": len(specs)}, len(specs), "w", lease))
    return sorted(j.id for j in jobs)


async def replies(store: Store) -> list[tuple[int | None, int, str | None, dict[str, str], Any]]:
    """(job id, n, address, headers, body as JSON) of every unsent reply row, claimed; none
    has a key (the address is its jobwire-reply-to header)."""
    rows = await store.claim_outbox(OUTPUT, 100, 30.0)
    assert [r.key for r in rows] == [None] * len(rows)
    return [
        (r.job_id, r.n, r.headers.get("jobwire-reply-to"), r.headers, json.loads(r.body))
        for r in rows
    ]


def headers(status: str, correlation: str | None = "c-1", to: str = "amq.gen-1") -> dict[str, str]:
    """The headers a reply row carries."""
    found = {"jobwire-status": status, "content-type": "application/json", "jobwire-reply-to": to}
    if correlation is not None:
        found["jobwire-correlation"] = correlation
    return found


class FirstFails:
    """A publisher that confirms every row of a batch but its first."""

    async def connect(self) -> None:
        return None

    async def publish(self, rows: Sequence[OutboxRow], timeout: float) -> Published:
        return Published(frozenset(r.id for r in rows[1:]), "the first was refused")

    async def close(self) -> None:
        return None


class ReplyContract:
    """The tests; each subclass gives the ``store`` fixture."""

    async def test_a_success_replies_once_with_its_result(self, store: Store) -> None:
        a, plain = await started(store, [JobSpec("rpc", {"x": 1}, reply=reply()), JobSpec("p")])
        done = await store.complete_many(
            "w",
            [
                Outcome(a, 1, JobStatus.SUCCEEDED, 0.01, result_json='{"total": 42}'),
                Outcome(plain, 1, JobStatus.SUCCEEDED, 0.01, result_json="1"),
            ],
        )
        assert done == 2
        assert await replies(store) == [(a, 0, "amq.gen-1", headers("succeeded"), {"total": 42})]
        job = await store.get(a)
        assert job is not None and job.reply == {**reply(), "replied": True}
        assert (await store.claim_outbox(OUTPUT, 10, 30.0)) == []  # leased: nothing more

    async def test_a_retry_replies_nothing_the_final_failure_its_error(self, store: Store) -> None:
        (a,) = await started(store, [JobSpec("rpc", reply=reply(correlation=None))])
        await store.complete_many(
            "w", [Outcome(a, 1, JobStatus.RETRYING, 0.01, error="boom", retry_in=0)]
        )
        assert await store.outbox_pending() == {}
        jobs = await store.claim(ClaimRequest({"default": 1}, 1, "w", 30.0))
        assert [j.id for j in jobs] == [a]
        await store.complete_many("w", [Outcome(a, 2, JobStatus.FAILED, 0.01, error="boom 2")])
        assert await replies(store) == [
            (a, 0, "amq.gen-1", headers("failed", None), {"error": "boom 2", "status": "failed"})
        ]

    async def test_a_job_stored_failed_replies_and_its_duplicate_does_not(
        self, store: Store
    ) -> None:
        poison = JobSpec(
            "(unroutable)",
            body=b"not json",
            failed_reason="body is not valid JSON",
            dedup_key="rpc:m-1",
            reply=reply("amq.gen-2", "c-2"),
        )
        first = await store.enqueue_many([poison])
        again = await store.enqueue_many([poison])  # the broker redelivered it
        assert first[0] is not None and again == [None]
        assert await replies(store) == [
            (
                first[0],
                0,
                "amq.gen-2",
                headers("failed", "c-2", "amq.gen-2"),
                {"error": "body is not valid JSON", "status": "failed"},
            )
        ]

    async def test_a_cancelled_job_replies(self, store: Store) -> None:
        await store.enqueue_many([JobSpec("rpc", reply=reply(), delay=3600)])
        (job,) = await store.list_jobs(limit=5)
        assert await store.cancel(job.id) == "cancelled"
        (row,) = await replies(store)
        assert row[:3] == (job.id, 0, "amq.gen-1")
        assert row[3]["jobwire-status"] == "cancelled"
        assert row[4]["status"] == "cancelled"

    async def test_a_lost_last_attempt_replies_its_failure(self, store: Store) -> None:
        (a,) = await started(store, [JobSpec("rpc", max_attempts=1, reply=reply())], lease=0.05)
        recovered = await wait_for(store.recover_expired_leases, timeout=5, what="lease expired")
        assert recovered == [a]
        (row,) = await replies(store)
        assert row[0] == a and row[4]["status"] == "failed"
        assert "lease expired" in row[4]["error"]

    async def test_a_retried_failed_job_does_not_reply_twice(self, store: Store) -> None:
        (a,) = await started(store, [JobSpec("rpc", max_attempts=1, reply=reply())])
        await store.complete_many("w", [Outcome(a, 1, JobStatus.FAILED, 0.01, error="x")])
        assert await store.retry([a]) == [a]
        jobs = await store.claim(ClaimRequest({"default": 1}, 1, "w", 30.0))
        await store.complete_many("w", [Outcome(jobs[0].id, 2, JobStatus.SUCCEEDED, 0.01)])
        assert [(r[0], r[3]["jobwire-status"]) for r in await replies(store)] == [(a, "failed")]

    async def test_a_bulk_cancel_replies_for_each_job_it_cancels(self, store: Store) -> None:
        (running,) = await started(store, [JobSpec("rpc", reply=reply("amq.gen-r", "r"))])
        await store.enqueue_many(
            [JobSpec("rpc", reply=reply(f"amq.gen-{i}", f"c-{i}"), delay=3600) for i in range(3)]
        )
        waiting = [j.id for j in await store.list_jobs(limit=10) if j.id != running]
        assert len(waiting) == 3
        done = await store.cancel_ids([*waiting, running])
        assert done == {**dict.fromkeys(waiting, "cancelled"), running: "running"}
        # The running job is only flagged: its reply comes with its outcome.
        await store.complete_many(
            "w", [Outcome(running, 1, JobStatus.CANCELLED, 0.01, error="cancelled")]
        )
        rows = await replies(store)
        assert sorted((r[0], r[2], r[3]["jobwire-status"]) for r in rows) == sorted(
            [(j, f"amq.gen-{i}", "cancelled") for i, j in enumerate(sorted(waiting))]
            + [(running, "amq.gen-r", "cancelled")]
        )
        assert all(r[4]["status"] == "cancelled" for r in rows)

    async def test_a_reply_is_claimed_while_one_to_its_address_is_in_flight(
        self, store: Store
    ) -> None:
        """Replies have no order among themselves: a reply to the address of one in flight
        goes out at once, not after it (the usual case: one reply queue per requester)."""
        a, b = await started(
            store, [JobSpec("rpc", reply=reply(correlation=c)) for c in ("c-a", "c-b")]
        )
        await store.complete_many("w", [Outcome(a, 1, JobStatus.SUCCEEDED, 0.01)])
        first = await store.claim_outbox(OUTPUT, 10, 30.0)  # in flight, not settled
        await store.complete_many("w", [Outcome(b, 1, JobStatus.SUCCEEDED, 0.01)])
        second = await store.claim_outbox(OUTPUT, 10, 30.0)
        assert [r.job_id for r in first] == [a]
        assert [r.job_id for r in second] == [b], "held up by the reply in flight"

    async def test_a_failed_reply_does_not_send_a_later_one_to_its_address_again(
        self, store: Store
    ) -> None:
        """One reply of a batch fails: the other replies to its address that the broker
        confirmed are marked sent, not sent again after it."""
        ids = await started(
            store, [JobSpec("rpc", reply=reply(correlation=f"c-{i}")) for i in range(3)]
        )
        await store.complete_many(
            "w", [Outcome(i, 1, JobStatus.SUCCEEDED, 0.01, result_json="1") for i in ids]
        )
        relay = OutboxRelay(OUTPUT, FirstFails(), store, poll_interval=0.01)
        relay._backoff.initial = relay._backoff.maximum = 0.01
        assert await relay.drain()
        assert (relay.counters.sent, relay.counters.failed) == (2, 1)
        left = await store.claim_outbox(OUTPUT, 10, 30.0)
        assert len(left) == 1 and left[0].job_id in ids, "only the failed reply is left"
        assert left[0].attempts == 2

    async def test_jobs_without_an_address_never_reply(self, store: Store) -> None:
        a, b = await started(store, [JobSpec("p"), JobSpec("p")])
        await store.complete_many(
            "w",
            [
                Outcome(a, 1, JobStatus.SUCCEEDED, 0.01),
                Outcome(b, 1, JobStatus.FAILED, 0.01, error="x"),
            ],
        )
        await store.enqueue_many([JobSpec("p", failed_reason="poison")])
        assert await store.outbox_pending() == {}


class TestMemoryReply(ReplyContract):
    """The contract in memory."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        yield MemoryStore()


class TestPostgresReply(ReplyContract):
    """The contract on PostgreSQL (migration 0013's triggers), and what only it has."""

    @pytest.fixture
    async def store(self, pg_store: PostgresStore) -> AsyncIterator[Store]:
        yield pg_store

    async def test_a_dependent_failed_by_its_dependency_replies_its_error(
        self, store: Store
    ) -> None:
        """0012's cascade: a dependency's failure fails its waiting dependent (an UPDATE by
        a trigger), and a dependent enqueued after it is stored failed: one reply each."""
        (dep,) = await started(store, [JobSpec("p", max_attempts=1)])
        (waiting,) = await store.enqueue_many([JobSpec("rpc", after=[dep], reply=reply())])
        await store.complete_many("w", [Outcome(dep, 1, JobStatus.FAILED, 0.01, error="x")])
        (late,) = await store.enqueue_many(
            [JobSpec("rpc", after=[dep], reply=reply("amq.gen-2", "c-2"))]
        )
        rows = await replies(store)
        assert [(r[0], r[2], r[3]["jobwire-status"]) for r in rows] == [
            (waiting, "amq.gen-1", "failed"),
            (late, "amq.gen-2", "failed"),
        ]
        error = {"error": f"dependency {dep} failed", "status": "failed"}
        assert [r[4] for r in rows] == [error, error]

    @pytest.mark.parametrize("bad", ['"amq.gen-1"', '{"to": "amq.gen-1"}', '{"output": 7}'])
    async def test_a_reply_written_by_hand_without_an_output_is_refused_alone(
        self, store: Store, database_url: str, bad: str
    ) -> None:
        """Stored, such a value would fail the reply trigger's insert, and with it the
        completion batch of every job beside it: the write by hand fails instead."""
        a, b = await started(store, [JobSpec("rpc", reply=reply()), JobSpec("rpc")])
        conn = await asyncpg.connect(database_url)
        try:
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(f"UPDATE jobwire.jobs SET reply = '{bad}' WHERE id = $1", b)
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(
                    "INSERT INTO jobwire.jobs (handler, status, finished_at, reply) "
                    f"VALUES ('rpc', 'failed', now(), '{bad}')"
                )
        finally:
            await conn.close()
        done = await store.complete_many(
            "w",
            [
                Outcome(a, 1, JobStatus.SUCCEEDED, 0.01, result_json="1"),
                Outcome(b, 1, JobStatus.SUCCEEDED, 0.01, result_json="2"),
            ],
        )
        assert done == 2
        assert [r[0] for r in await replies(store)] == [a]
