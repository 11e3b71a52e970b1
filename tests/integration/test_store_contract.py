"""The store roles' semantics, written once and run on both stores: memory and PostgreSQL.

The memory store stands in for PostgreSQL in the unit tests of the core, so whatever it
answers differently here is a bug in it (PostgreSQL-only matters, such as plans,
migrations and concurrency, are in test_store_postgres.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobwire.models import JobSpec, JobStatus, Outcome, StreamOffset
from jobwire.routing import UNROUTABLE
from jobwire.store.base import (
    UNROUTABLE_HANDLER,
    ClaimFlow,
    ClaimRequest,
    DirectStart,
    InvalidJobData,
    JobFilter,
    QueueFlow,
    Store,
)
from jobwire.store.memory import MemoryStore
from jobwire.store.postgres import PostgresStore

pytestmark = pytest.mark.timeout(60)


def claim(queues: dict[str, int], limit: int, worker: str = "w", lease: float = 30) -> ClaimRequest:
    """A claim of up to ``limit`` jobs, at most ``queues[q]`` of queue ``q``."""
    return ClaimRequest(queues, limit, worker, lease)


def schedule(name: str, next_run_at: datetime, **changes: Any) -> dict[str, Any]:
    """A row as the scheduler hands sync_schedules: every 60 s, from ``next_run_at``."""
    row: dict[str, Any] = {
        "name": name,
        "cron": None,
        "interval_s": 60.0,
        "timezone": "UTC",
        "handler": "noop",
        "payload": {"from": name},
        "queue": "default",
        "priority": 0,
        "max_attempts": None,
        "enabled": True,
        "start_at": None,
        "end_at": None,
        "max_runs": None,
        "catch_up": "latest",
        "next_run_at": next_run_at,
    }
    return {**row, **changes}


async def ids(store: Store, specs: list[JobSpec]) -> list[int]:
    """Enqueue specs that are all new; their ids."""
    found = await store.enqueue_many(specs)
    assert None not in found
    return [i for i in found if i is not None]


async def status_of(store: Store, job_id: int) -> str:
    """The status of one job that exists."""
    job = await store.get(job_id)
    assert job is not None
    return str(job.status)


class StoreContract:
    """The tests; each subclass gives the ``store`` fixture."""

    # -- jobs: enqueue ---------------------------------------------------------------

    async def test_enqueue_maps_ids_and_skips_duplicate_keys(self, store: Store) -> None:
        first = await store.enqueue_many(
            [JobSpec("noop", dedup_key="a"), JobSpec("noop"), JobSpec("noop", dedup_key="b")]
        )
        assert all(isinstance(i, int) for i in first)
        again = await store.enqueue_many(
            [
                JobSpec("noop", dedup_key="b"),
                JobSpec("noop", 1, dedup_key="c"),
                JobSpec("noop"),
                JobSpec("noop", 2, dedup_key="c"),  # repeated within the batch
            ]
        )
        assert again[0] is None and again[3] is None
        assert isinstance(again[1], int) and isinstance(again[2], int)
        job = await store.get(again[1])
        assert job is not None and (job.dedup_key, job.payload) == ("c", 1)
        assert await store.ids_by_dedup_key(["a", "c", "zz"]) == {"a": first[0], "c": again[1]}
        assert (await store.stats())["default"] == {"pending": 5}

    async def test_each_row_keeps_its_own_values_whether_its_batch_shares_them_or_not(
        self, store: Store
    ) -> None:
        (parent,) = await ids(store, [JobSpec("noop")])

        def spec(i: int, shared: bool) -> JobSpec:
            n = 0 if shared else i
            return JobSpec(
                f"h{n}",
                {"i": i},
                queue=f"q{n}",
                priority=n,
                max_attempts=n + 1,
                delay=3600.0 if n % 2 else 0.0,
                body=b"raw%d" % n if n else None,
                content_type=f"text/x{n}" if n else None,
                source=f"s{n}",
                parent_id=parent if n % 2 else None,
                failed_reason=f"bad {n}" if n == 2 else None,
                dedup_key=f"{shared}-{i}",
            )

        for shared in (False, True):
            specs = [spec(i, shared) for i in range(4)]
            flags = [i == 0 for i in range(4)] if shared else [i == 3 for i in range(4)]
            enqueued = await store.enqueue(specs, DirectStart("w1", 30.0, flags))
            for job_id, want, started in zip(enqueued.ids, specs, flags, strict=True):
                assert job_id is not None
                row = await store.get(job_id)
                assert row is not None
                got = (row.handler, row.queue, row.priority, row.max_attempts, row.body)
                wanted = (want.handler, want.queue, want.priority, want.max_attempts, want.body)
                assert got == wanted
                assert (row.content_type, row.source, row.parent_id, row.payload) == (
                    want.content_type,
                    want.source,
                    want.parent_id,
                    want.payload,
                )
                assert (row.last_error, row.run_at > row.created_at + timedelta(minutes=30)) == (
                    want.failed_reason,
                    want.delay > 0,
                )
                status = (
                    JobStatus.FAILED
                    if want.failed_reason
                    else JobStatus.RUNNING
                    if started
                    else JobStatus.PENDING
                )
                assert row.status == status, (shared, want)

    async def test_direct_start_returns_the_jobs_it_made_running(self, store: Store) -> None:
        await store.enqueue_many([JobSpec("noop", dedup_key="old")])
        specs = [
            JobSpec("echo", {"n": 1}, priority=3, max_attempts=2, headers={"h": "v"}),
            JobSpec("echo", {"n": 2}),  # not flagged: waits for a claim
            JobSpec("echo", dedup_key="old"),  # a duplicate makes no row, starts nothing
            JobSpec("noop", failed_reason="poison"),  # stored failed, never started
        ]
        enqueued = await store.enqueue(specs, DirectStart("w1", 30.0, [True, False, True, True]))
        first, second, dup, failed = enqueued.ids
        assert first is not None and second is not None and failed is not None and dup is None
        (started,) = enqueued.started
        assert (started.id, started.handler, started.payload) == (first, "echo", {"n": 1})
        assert (started.status, started.attempts, started.worker_id) == ("running", 1, "w1")
        assert (started.priority, started.max_attempts, started.headers) == (3, 2, {"h": "v"})
        row = await store.get(first)
        assert row is not None and (row.status, row.attempts, row.worker_id) == (
            JobStatus.RUNNING,
            1,
            "w1",
        )
        assert row.lease_until is not None
        assert await status_of(store, second) == "pending"
        poison = await store.get(failed)
        assert poison is not None and (poison.status, poison.attempts, poison.worker_id) == (
            JobStatus.FAILED,
            0,
            None,
        )
        assert (await store.enqueue([JobSpec("noop")])).started == []  # no DirectStart

    async def test_offsets_commit_with_the_rows_and_never_move_backwards(
        self, store: Store
    ) -> None:
        (job_id,) = await store.enqueue_many(
            [JobSpec("noop", dedup_key="k/0/7")], None, [StreamOffset("g", "t", 0, 8)]
        )
        assert job_id is not None
        assert await store.stored_offsets("g", [("t", 0), ("t", 1)]) == {("t", 0): 8}
        # A late former owner: its rows are duplicates and its older offset is not taken.
        again = await store.enqueue_many(
            [JobSpec("noop", dedup_key="k/0/7")], None, [StreamOffset("g", "t", 0, 3)]
        )
        assert again == [None]
        await store.enqueue_many([], None, [StreamOffset("g", "t", 1, 5)])  # offsets alone
        assert await store.stored_offsets("g", [("t", 0), ("t", 1)]) == {("t", 0): 8, ("t", 1): 5}
        assert await store.stored_offsets("other", [("t", 0)]) == {}

    async def test_a_refused_row_refuses_the_batch_and_its_offsets(self, store: Store) -> None:
        with pytest.raises(InvalidJobData):
            await store.enqueue_many(
                [JobSpec("noop"), JobSpec("noop", payload={"bad": "nul \u0000 char"})],
                None,
                [StreamOffset("g", "t", 0, 99)],
            )
        with pytest.raises(InvalidJobData):
            await store.enqueue_many([JobSpec("noop", headers={"h": "a\u0000b"})])
        assert await store.stored_offsets("g", [("t", 0)]) == {}
        assert await store.stats() == {}

    # -- jobs: claim, complete, leases ------------------------------------------------

    async def test_claim_order_priority_then_fifo_within_queue_limits(self, store: Store) -> None:
        future, *_ = await ids(
            store,
            [
                JobSpec("noop", "future", priority=99, delay=3600),
                JobSpec("noop", "low-1"),
                JobSpec("noop", "high-1", priority=5),
                JobSpec("noop", "low-2"),
                JobSpec("noop", "high-2", priority=5),
                JobSpec("noop", "other-1", queue="other"),
                JobSpec("noop", "other-2", queue="other", priority=9),
            ],
        )
        claimed = await store.claim(claim({"default": 10, "other": 1}, 3))
        assert [j.payload for j in claimed] == ["other-2", "high-1", "high-2"]
        rest = await store.claim(claim({"default": 1, "other": 0}, 10))
        assert [j.payload for j in rest] == ["low-1"]
        rest += await store.claim(claim({"default": 10, "other": 10}, 10))
        assert [j.payload for j in rest] == ["low-1", "low-2", "other-1"]
        assert all(j.status == JobStatus.RUNNING and j.attempts == 1 for j in claimed + rest)
        assert all(j.worker_id == "w" and j.lease_until is not None for j in claimed + rest)
        assert await store.claim(claim({"default": 10}, 10)) == []
        assert await status_of(store, future) == "pending"
        assert await store.ready_backlog(10) == 0

    async def test_a_batch_of_outcomes_that_share_their_values_writes_each_job(
        self, store: Store
    ) -> None:
        await ids(store, [JobSpec("noop", max_attempts=3) for _ in range(6)])
        jobs = await store.claim(claim({"default": 6}, 6, "w1"))
        retried, done = jobs[:3], jobs[3:]
        shared_retry = [
            Outcome(j.id, 1, JobStatus.RETRYING, 0.1 * n, error="busy", retry_in=3600)
            for n, j in enumerate(retried)
        ]
        shared_done = [
            Outcome(j.id, 1, JobStatus.SUCCEEDED, 0.2, result_json='{"n": 7}') for j in done
        ]
        assert await store.complete_many("w1", shared_retry) == 3
        assert await store.complete_many("w1", shared_done) == 3
        for job in retried:
            row = await store.get(job.id)
            assert row is not None and (row.status, row.last_error) == ("retrying", "busy")
            assert row.run_at > datetime.now(UTC) + timedelta(minutes=50)
        for job in done:
            row = await store.get(job.id)
            assert row is not None and (row.status, row.result, row.progress) == (
                "succeeded",
                {"n": 7},
                100,
            )
        runs = [r for j in jobs for r in await store.runs(j.id)]
        assert [(r["attempt"], r["status"], r["error"]) for r in runs] == [
            (1, "retrying", "busy")
        ] * 3 + [(1, "succeeded", None)] * 3

    async def test_complete_only_by_the_holder_of_that_attempt(self, store: Store) -> None:
        await ids(store, [JobSpec("noop"), JobSpec("noop", max_attempts=3)])
        done, retried = await store.claim(claim({"default": 2}, 2, "w1"))
        outcomes = [
            Outcome(done.id, 1, JobStatus.SUCCEEDED, 0.5, result_json='{"ok": true}'),
            Outcome(retried.id, 1, JobStatus.RETRYING, 0.25, error="boom", retry_in=3600),
        ]
        assert await store.complete_many("w2", outcomes) == 0  # not the holder
        assert await store.complete_many("w1", [Outcome(done.id, 2, JobStatus.FAILED, 0)]) == 0
        assert await store.complete_many("w1", outcomes) == 2
        assert await store.complete_many("w1", outcomes) == 0  # held no longer
        ok = await store.get(done.id)
        assert ok is not None and (ok.status, ok.result, ok.progress) == (
            "succeeded",
            {"ok": True},
            100,
        )
        assert ok.finished_at is not None and ok.worker_id is None and ok.lease_until is None
        again = await store.get(retried.id)
        assert again is not None and (again.status, again.last_error) == ("retrying", "boom")
        assert again.finished_at is None and again.run_at > datetime.now(UTC) + timedelta(
            minutes=50
        )
        runs = await store.runs(done.id)
        assert [(r["attempt"], r["status"], r["duration"], r["worker_id"]) for r in runs] == [
            (1, "succeeded", 0.5, "w1")
        ]
        assert [(r["status"], r["error"]) for r in await store.runs(retried.id)] == [
            ("retrying", "boom")
        ]

    async def test_renew_returns_the_held_jobs_and_those_to_cancel(self, store: Store) -> None:
        await ids(store, [JobSpec("noop") for _ in range(3)])
        a, b = await store.claim(claim({"default": 2}, 2, "w1"))
        (c,) = await store.claim(claim({"default": 1}, 1, "w2"))
        assert await store.cancel(b.id) == "running"
        renewal = await store.renew_leases("w1", 60, [a.id, b.id, c.id, 10**9])
        assert renewal.held == {a.id, b.id} and renewal.cancel == {b.id}
        assert (await store.renew_leases("w1", 60, [])).held == frozenset()

    async def test_recovering_an_expired_lease_counts_a_lost_run(self, store: Store) -> None:
        retry, last, cancelled, alive = await ids(
            store,
            [JobSpec("noop"), JobSpec("noop", max_attempts=1), JobSpec("noop"), JobSpec("noop")],
        )
        await store.claim(claim({"default": 3}, 3, "dead", lease=0.01))
        await store.claim(claim({"default": 1}, 1, "alive", lease=30))
        await store.cancel(cancelled)
        await asyncio.sleep(0.05)
        assert sorted(await store.recover_expired_leases()) == [retry, last, cancelled]
        assert await store.recover_expired_leases() == []
        assert [await status_of(store, i) for i in (retry, last, cancelled, alive)] == [
            "retrying",
            "failed",
            "cancelled",
            "running",
        ]
        job = await store.get(retry)
        assert job is not None and job.attempts == 1 and job.worker_id is None
        assert job.last_error == "lease expired: worker dead stopped heartbeating during attempt 1"
        runs = await store.runs(retry)
        assert [(r["attempt"], r["status"], r["worker_id"]) for r in runs] == [(1, "lost", "dead")]
        (again,) = await store.claim(claim({"default": 1}, 1, "new"))
        assert (again.id, again.attempts) == (retry, 2)
        stale = Outcome(retry, 1, JobStatus.SUCCEEDED, 0.1)
        assert await store.complete_many("dead", [stale]) == 0

    async def test_release_and_release_unknown_count_no_attempt(self, store: Store) -> None:
        enqueued = await store.enqueue(
            [JobSpec("noop") for _ in range(4)], DirectStart("w1", 30.0, [True] * 4)
        )
        running, orphan, given_back, cancelled = [i for i in enqueued.ids if i is not None]
        await store.cancel(cancelled)
        assert await store.release_unknown("w2", []) == []  # another worker's rows: untouched
        assert await store.release_unknown("w1", [running, given_back, cancelled]) == [orphan]
        assert await store.release("w1", [given_back, cancelled, orphan]) in (
            [given_back, cancelled],
            [cancelled, given_back],
        )
        for job_id, status in (
            (orphan, "pending"),
            (given_back, "pending"),
            (cancelled, "cancelled"),
            (running, "running"),
        ):
            job = await store.get(job_id)
            assert job is not None and job.status == status, job_id
            if status != "running":
                assert (job.attempts, job.worker_id, job.lease_until) == (0, None, None)
        assert await store.runs(orphan) == []  # no attempt started, none recorded
        runs = await store.runs(given_back)
        assert [(r["attempt"], r["status"]) for r in runs] == [(1, "interrupted")]
        (claimed,) = await store.claim(claim({"default": 1}, 1))
        assert claimed.attempts == 1

    async def test_progress_is_kept_for_running_jobs_only(self, store: Store) -> None:
        running, waiting = await ids(store, [JobSpec("noop"), JobSpec("noop")])
        await store.claim(claim({"default": 1}, 1))
        await store.set_progress(running, 40, "halfway")
        await store.set_progress(waiting, 40, "no")
        job = await store.get(running)
        assert job is not None and (job.progress, job.progress_note) == (40, "halfway")
        other = await store.get(waiting)
        assert other is not None and other.progress is None
        assert await store.existing([running, waiting, 10**9]) == {running, waiting}

    async def test_workers_register_heartbeat_and_leave(self, store: Store) -> None:
        await store.register_worker("a", "host", 12, "1.0")
        await store.heartbeat_worker("a", {"sources": {"in": "up"}})
        (row,) = await store.list_workers()
        assert (row["id"], row["host"], row["pid"], row["version"]) == ("a", "host", 12, "1.0")
        assert row["state"] == {"sources": {"in": "up"}}
        await store.unregister_worker("a")
        assert await store.list_workers() == []

    # -- admin ------------------------------------------------------------------------

    async def test_cancel_a_waiting_job_at_once_and_flag_a_running_one(self, store: Store) -> None:
        waiting, running = await ids(store, [JobSpec("noop"), JobSpec("noop", priority=1)])
        await store.claim(claim({"default": 1}, 1))
        assert await store.cancel(waiting) == "cancelled"
        assert await store.cancel(running) == "running"
        assert await store.cancel(10**9) is None
        job = await store.get(running)
        assert job is not None and job.cancel_requested and job.status == JobStatus.RUNNING
        gone = await store.get(waiting)
        assert gone is not None and gone.finished_at is not None
        assert await store.cancel(waiting) == "cancelled"  # finished: stays as it is

    async def test_retry_requeues_failed_and_cancelled_jobs_only(self, store: Store) -> None:
        failed, cancelled, succeeded, pending = await ids(
            store, [JobSpec("noop") for _ in range(4)]
        )
        jobs = await store.claim(claim({"default": 3}, 3))
        await store.complete_many(
            "w",
            [
                Outcome(failed, 1, JobStatus.FAILED, 0, error="bad"),
                Outcome(cancelled, 1, JobStatus.CANCELLED, 0),
                Outcome(succeeded, 1, JobStatus.SUCCEEDED, 0, result_json="1"),
            ],
        )
        assert len(jobs) == 3
        assert await store.retry([failed, succeeded, pending]) == [failed]
        job = await store.get(failed)
        assert job is not None and (job.status, job.attempts, job.max_attempts) == ("pending", 1, 6)
        assert job.finished_at is None and job.result is None
        assert await store.retry(status="cancelled") == [cancelled]
        assert await store.retry(status="cancelled") == []
        (again,) = await store.claim(claim({"default": 1}, 1))
        assert (again.id, again.attempts) == (failed, 2)

    async def test_list_jobs_filters_and_pages_newest_first(self, store: Store) -> None:
        await store.enqueue_many([JobSpec("noop", queue=("a", "b")[i % 2]) for i in range(24)])
        await store.enqueue_many(
            [JobSpec("noop", queue="a", failed_reason="bad input") for _ in range(3)]
        )
        claimed = await store.claim(claim({"a": 8, "b": 8}, 16))
        kinds = (JobStatus.SUCCEEDED, JobStatus.RETRYING, JobStatus.CANCELLED)
        outcomes = [
            Outcome(job.id, 1, kinds[n % 3], 0.0, retry_in=3600.0)
            for n, job in enumerate(claimed[:12])
        ]
        await store.complete_many("w", outcomes)
        every = await store.list_jobs(limit=1000)
        assert len(every) == 27
        assert [j.id for j in every] == sorted((j.id for j in every), reverse=True)
        for status in [s.value for s in JobStatus]:
            for queue in ("a", "b", None):
                expected = [j.id for j in every if j.status == status and queue in (None, j.queue)]
                if queue is None:
                    assert expected, status  # every status is there to be listed
                got = [j.id for j in await store.list_jobs(status, queue, limit=1000)]
                assert got == expected, (status, queue)
                first = await store.list_jobs(status, queue, limit=2)
                if first:
                    rest = await store.list_jobs(status, queue, limit=1000, before_id=first[-1].id)
                    assert [j.id for j in first + rest] == expected, (status, queue)

    async def test_stats_count_live_jobs_or_all(self, store: Store) -> None:
        await store.enqueue_many([JobSpec("noop") for _ in range(4)])
        await store.enqueue_many([JobSpec("noop", queue="mail", failed_reason="bad")])
        a, b = await store.claim(claim({"default": 2}, 2))
        await store.complete_many("w", [Outcome(a.id, 1, JobStatus.SUCCEEDED, 0)])
        assert b.status == JobStatus.RUNNING
        assert await store.stats(finished=False) == {"default": {"pending": 2, "running": 1}}
        assert await store.stats() == {
            "default": {"pending": 2, "running": 1, "succeeded": 1},
            "mail": {"failed": 1},
        }
        assert await store.ready_backlog(1) == 1 and await store.ready_backlog(10) == 2

    async def test_oldest_ready_ages_each_asked_queue_by_its_ready_jobs_only(
        self, store: Store
    ) -> None:
        assert await store.oldest_ready(["default", "mail"]) == {"default": 0.0, "mail": 0.0}
        await store.enqueue_many([JobSpec("noop"), JobSpec("noop", queue="unasked")])
        await store.enqueue_many([JobSpec("noop", queue="mail", delay=3600)])  # not due
        await asyncio.sleep(0.3)
        await store.enqueue_many([JobSpec("noop")])  # newer: the oldest one counts
        ages = await store.oldest_ready(["default", "mail"])
        assert set(ages) == {"default", "mail"} and ages["mail"] == 0.0, ages
        assert 0.3 <= ages["default"] < 30, ages

        # Running jobs are not waiting; a retry waits from when it became due again.
        running = await store.claim(claim({"default": 2}, 2))
        assert (await store.oldest_ready(["default"]))["default"] == 0.0
        await store.complete_many(
            "w", [Outcome(running[0].id, 1, JobStatus.RETRYING, 0, retry_in=0.0)]
        )
        await asyncio.sleep(0.1)
        assert 0.1 <= (await store.oldest_ready(["default"]))["default"] < 30

    # -- schedules, leadership, retention ---------------------------------------------

    async def test_schedules_sync_due_fire_and_superseded(self, store: Store) -> None:
        past = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
        later = past + timedelta(days=1)
        await store.sync_schedules([schedule("due", past), schedule("later", later)])
        (due,) = await store.due_schedules()
        assert (due.name, due.next_run_at, due.run_count, due.payload) == (
            "due",
            past,
            0,
            {"from": "due"},
        )
        spec = JobSpec("noop", {"from": "due"}, source="schedule:due", dedup_key=f"due:{past}")
        moved_on = past + timedelta(minutes=10)
        assert await store.fire_schedule("due", [spec], past, moved_on, past) == 1
        # A second leader that read the same row: superseded, and nothing is written.
        assert await store.fire_schedule("due", [JobSpec("noop")], past, moved_on, past) is None
        assert (await store.stats())["default"] == {"pending": 1}
        row = await store.get_schedule("due")
        assert row is not None and (row.run_count, row.last_run_at, row.next_run_at) == (
            1,
            past,
            moved_on,
        )
        assert await store.due_schedules() == []
        # Config wins, but a schedule whose timing did not change keeps its next tick.
        await store.sync_schedules([schedule("due", later, priority=4)])
        kept = await store.get_schedule("due")
        assert kept is not None and (kept.next_run_at, kept.priority) == (moved_on, 4)
        await store.sync_schedules([schedule("due", later, interval_s=30.0)])
        retimed = await store.get_schedule("due")
        assert retimed is not None and retimed.next_run_at == later
        assert [(s.name, s.enabled) for s in await store.list_schedules()] == [
            ("due", True),
            ("later", False),  # no longer configured: disabled, kept
        ]
        assert await store.set_schedule_enabled("due", False) is True
        assert await store.set_schedule_enabled("nope", True) is False
        assert await store.get_schedule("nope") is None

    async def test_a_claim_after_a_pause_answered_takes_none_of_the_queue(
        self, store: Store
    ) -> None:
        # A pool leaves a paused queue out of its request only once it has heard of the
        # pause (a NOTIFY, a moment later): its claims in between started the queue's jobs
        # after `queues pause` had answered. The claim itself must refuse them.
        plain = await ids(store, [JobSpec("noop", queue="held")])
        keyed = await ids(store, [JobSpec("noop", queue="held", concurrency_key="k")])
        free = await ids(store, [JobSpec("noop", queue="free")])
        assert await store.set_queue_paused("held", True, "test")
        flow = ClaimFlow({"held": QueueFlow(key_limit=1, only_special=True)})
        ask = ClaimRequest({"held": 5, "free": 5}, 10, "w", 30.0, flow)
        assert [j.id for j in await store.claim(ask)] == free
        assert await store.set_queue_paused("held", False, "test")
        assert sorted(j.id for j in await store.claim(ask)) == sorted(plain + keyed)

    async def test_a_schedule_paused_after_the_leader_read_it_fires_nothing(
        self, store: Store
    ) -> None:
        past = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
        await store.sync_schedules([schedule("paused", past)])
        (_read,) = await store.due_schedules()  # the leader reads it ...
        assert await store.set_schedule_enabled("paused", False)  # ... `schedules pause`
        spec = JobSpec("noop", source="schedule:paused", dedup_key=f"paused:{past}")
        # Before, the fire went through: a job after the pause had been acknowledged.
        assert await store.fire_schedule("paused", [spec], past, past + timedelta(1), past) is None
        assert (await store.stats()).get("default", {}).get("pending", 0) == 0
        row = await store.get_schedule("paused")
        assert row is not None and (row.enabled, row.next_run_at, row.run_count) == (False, past, 0)

    async def test_a_schedule_stops_after_max_runs(self, store: Store) -> None:
        past = datetime.now(UTC) - timedelta(minutes=5)
        await store.sync_schedules([schedule("twice", past, max_runs=2)])
        specs = [JobSpec("noop", i, dedup_key=f"twice:{i}") for i in range(2)]
        assert await store.fire_schedule("twice", specs, past, past + timedelta(hours=1), past) == 2
        row = await store.get_schedule("twice")
        assert row is not None and (row.run_count, row.enabled) == (2, False)

    async def test_leadership_is_held_by_one_until_released(self, store: Store) -> None:
        lock = await store.try_leadership("contract-lead")
        assert lock is not None and await lock.still_held()
        assert await store.try_leadership("contract-lead") is None
        other = await store.try_leadership("contract-other")
        assert other is not None
        await lock.release()
        again = await store.try_leadership("contract-lead")
        assert again is not None
        for held in (again, other):
            await held.release()

    async def test_purge_deletes_finished_jobs_and_keeps_their_children(self, store: Store) -> None:
        (parent,) = await ids(store, [JobSpec("noop")])
        child, waiting = await ids(store, [JobSpec("noop", parent_id=parent), JobSpec("noop")])
        (claimed,) = await store.claim(claim({"default": 1}, 1))
        assert claimed.id == parent
        await store.complete_many("w", [Outcome(parent, 1, JobStatus.SUCCEEDED, 0.0)])
        assert await store.purge_finished(3600.0, 10) == 0  # not old enough
        assert await store.purge_finished(0.0, 10) == 1
        assert await store.get(parent) is None and await store.runs(parent) == []
        kept = await store.get(child)
        assert kept is not None and kept.parent_id is None and kept.status == JobStatus.PENDING
        assert await store.existing([waiting]) == {waiting}

    # -- bulk actions (jobwire jobs retry|cancel|delete) -----------------------------------

    async def test_select_ids_filters_and_pages_newest_first(self, store: Store) -> None:
        a, b, c, d = await ids(
            store,
            [
                JobSpec("echo", queue="q1", source="cli"),
                JobSpec("echo", queue="q2"),
                JobSpec("noop", queue="q1"),
                JobSpec("echo", queue="q1", source="cli"),
            ],
        )
        every = JobFilter()
        assert await store.select_ids(every, 10) == [d, c, b, a]
        assert await store.select_ids(every, 2) == [d, c]
        assert await store.select_ids(every, 2, before_id=c) == [b, a]
        echo_q1 = JobFilter(status="pending", queue="q1", handler="echo")
        assert await store.select_ids(echo_q1, 10) == [d, a]
        assert await store.select_ids(JobFilter(source="cli", ids=(a, b, c)), 10) == [a]
        future = datetime.now(UTC) + timedelta(hours=1)
        assert await store.select_ids(JobFilter(created_before=future), 10) == [d, c, b, a]
        assert await store.select_ids(JobFilter(created_after=future), 10) == []
        assert await store.select_ids(JobFilter(status="failed"), 10) == []
        assert [j.id for j in await store.jobs_by_ids([a, c, 10**9])] == [c, a]

    async def test_retry_ids_skips_poison_and_jobs_no_longer_failed(self, store: Store) -> None:
        assert UNROUTABLE == UNROUTABLE_HANDLER
        unroutable, never_ran, ran, waiting = await ids(
            store,
            [
                JobSpec(UNROUTABLE, failed_reason="no route"),
                JobSpec("echo", failed_reason="bad payload"),
                JobSpec("echo", max_attempts=1),
                JobSpec("echo"),
            ],
        )
        (claimed,) = await store.claim(claim({"default": 1}, 1))
        assert claimed.id == ran
        await store.complete_many("w", [Outcome(ran, 1, JobStatus.FAILED, 0.0, error="boom")])
        failed = JobFilter(status="failed")
        assert await store.select_ids(failed, 10) == [ran, never_ran, unroutable]
        assert await store.select_ids(JobFilter(status="failed", exclude_poison=True), 10) == [ran]
        everything = [unroutable, never_ran, ran, waiting]
        assert await store.retry_ids(everything) == [ran]
        assert await status_of(store, ran) == "pending"
        assert await store.retry_ids([ran]) == []  # no longer failed: skipped
        assert sorted(await store.retry_ids(everything, include_poison=True)) == [
            unroutable,
            never_ran,
        ]

    async def test_cancel_ids_cancels_waiting_and_flags_running(self, store: Store) -> None:
        running, waiting, done = await ids(
            store, [JobSpec("echo"), JobSpec("echo"), JobSpec("echo")]
        )
        (claimed,) = await store.claim(claim({"default": 1}, 1))
        assert claimed.id == running
        assert await store.cancel_ids([done]) == {done: "cancelled"}
        assert await store.cancel_ids([running, waiting, done, 10**9]) == {
            running: "running",
            waiting: "cancelled",
        }
        job = await store.get(running)
        assert job is not None and job.cancel_requested

    async def test_delete_ids_removes_finished_jobs_with_their_runs(self, store: Store) -> None:
        finished, running, waiting = await ids(
            store, [JobSpec("echo"), JobSpec("echo"), JobSpec("echo")]
        )
        await store.claim(claim({"default": 2}, 2))
        await store.complete_many("w", [Outcome(finished, 1, JobStatus.SUCCEEDED, 0.0)])
        assert len(await store.runs(finished)) == 1
        assert await store.delete_ids([finished, running, waiting, 10**9]) == [finished]
        assert await store.get(finished) is None and await store.runs(finished) == []
        assert await status_of(store, running) == "running"
        assert await status_of(store, waiting) == "pending"


class TestMemoryStore(StoreContract):
    """The contract on the memory store."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        """A fresh memory store."""
        yield MemoryStore()


class TestPostgresStore(StoreContract):
    """The contract on PostgreSQL."""

    @pytest.fixture
    async def store(self, pg_store: PostgresStore) -> AsyncIterator[Store]:
        """The test's own migrated database."""
        yield pg_store
