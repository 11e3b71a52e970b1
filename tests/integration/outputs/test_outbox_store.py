"""The outbox's store contract, on PostgreSQL and in memory: effects are written only with
a successful outcome of an attempt the worker still holds; claims keep a key's order and
never hand one key to two relays at once; mark, release, pending, purge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from jobwire.config import RetentionConfig
from jobwire.effects import ChildJob, EffectfulOutcome, Effects, OutboxMessage
from jobwire.maintenance import Maintenance
from jobwire.models import JobSpec, JobStatus, Outcome
from jobwire.store.base import ClaimRequest, StoreRefused
from jobwire.store.memory import MemoryStore
from jobwire.store.pg_outbox import EARLIEST
from jobwire.store.postgres import PostgresStore
from tests.support.waiting import wait_for

Store = Any  # either store: both have every role


def effects(job_id: int, count: int = 2, key: str | None = None, children: int = 0) -> Effects:
    """``count`` messages to output "out" and ``children`` echo jobs."""
    return Effects(
        [
            OutboxMessage("out", n, f"{job_id}-{n}".encode(), key, {"h": "v"})
            for n in range(1, count + 1)
        ],
        [ChildJob("echo", f'{{"i": {i}}}') for i in range(children)],
    )


async def running(store: Store, count: int, worker: str = "w") -> list[int]:
    """``count`` jobs enqueued and claimed by ``worker``."""
    await store.enqueue_many([JobSpec("pub", {"i": i}) for i in range(count)])
    jobs = await store.claim(ClaimRequest({"default": count}, count, worker, 30.0))
    return [j.id for j in jobs]


async def leases_left(store: Store) -> int:
    """Leases the store still keeps (outbox_leases)."""
    if isinstance(store, MemoryStore):
        return len(store.outbox_leases)
    async with store._pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM outbox_leases"))


async def _waits_on_an_advisory_lock(store: PostgresStore) -> bool:
    async with store._pool.acquire() as conn:
        return bool(
            await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
        )


def succeeded(job_id: int, fx: Effects) -> EffectfulOutcome:
    return EffectfulOutcome(job_id, 1, JobStatus.SUCCEEDED, 0.01, effects=fx)


class OutboxContract:
    """The tests; each subclass gives the ``store`` fixture."""

    async def test_effects_are_written_with_the_successful_outcome(self, store: Store) -> None:
        a, b, c = await running(store, 3)
        done = await store.complete_many(
            "w",
            [
                succeeded(a, effects(a, 2, children=2)),
                Outcome(b, 1, JobStatus.RETRYING, 0.01, error="x", retry_in=5),
                Outcome(c, 1, JobStatus.SUCCEEDED, 0.01),
            ],
        )
        assert done == 3
        rows = await store.claim_outbox("out", 10, 30.0)
        assert [(r.job_id, r.n, r.body, r.headers) for r in rows] == [
            (a, 1, f"{a}-1".encode(), {"h": "v"}),
            (a, 2, f"{a}-2".encode(), {"h": "v"}),
        ]
        assert rows[0].message_id == f"jobwire-{a}-1"
        children = [j for j in await store.list_jobs(limit=50) if j.parent_id == a]
        assert sorted(j.payload["i"] for j in children) == [0, 1]
        assert {str(j.status) for j in children} == {"pending"}

    async def test_a_lost_lease_publishes_nothing(self, store: Store) -> None:
        (a,) = await running(store, 1, worker="w1")
        done = await store.complete_many("someone-else", [succeeded(a, effects(a, children=1))])
        assert done == 0
        assert await store.outbox_pending() == {}
        assert [j for j in await store.list_jobs(limit=50) if j.parent_id == a] == []

    async def test_only_the_attempt_still_held_publishes(self, store: Store) -> None:
        a, b, c = await running(store, 3)
        stale = EffectfulOutcome(b, 2, JobStatus.SUCCEEDED, 0.01, effects=effects(b))
        done = await store.complete_many(
            "w", [succeeded(c, effects(c, 1)), stale, succeeded(a, effects(a, 1))]
        )
        assert done == 2  # b's attempt 2 is not the one running (1)
        rows = await store.claim_outbox("out", 10, 30.0)
        assert sorted(r.job_id for r in rows) == sorted([a, c])

    async def test_claims_keep_a_keys_order_and_lease_it_to_one_relay(self, store: Store) -> None:
        a, b = await running(store, 2)
        await store.complete_many(
            "w", [succeeded(a, effects(a, 3, key="k")), succeeded(b, effects(b, 2, key="other"))]
        )
        first = await store.claim_outbox("out", 2, 30.0)
        assert [(r.job_id, r.n) for r in first] == [(a, 1), (a, 2)]
        # Key k is in flight: a second relay gets only the other key's rows.
        second = await store.claim_outbox("out", 10, 30.0)
        assert [(r.job_id, r.n) for r in second] == [(b, 1), (b, 2)]
        assert await store.claim_outbox("out", 10, 30.0) == []
        await store.mark_outbox_sent([r.id for r in first])
        third = await store.claim_outbox("out", 10, 30.0)
        assert [(r.job_id, r.n) for r in third] == [(a, 3)]
        await store.release_outbox([r.id for r in third], "broker away")
        again = await store.claim_outbox("out", 10, 30.0)
        # A release gives the claim's attempt back: only a row's own failures count.
        assert [(r.id, r.attempts) for r in again] == [(third[0].id, 1)]
        pending = await store.outbox_pending()
        assert pending["out"][0] == 3  # b's two, a's third: not marked
        await store.mark_outbox_sent([r.id for r in second + again])
        assert await store.outbox_pending() == {}
        assert await store.purge_outbox(3600, 100) == 0
        assert await store.purge_outbox(0, 2) == 2
        assert await store.purge_outbox(0, 100) == 3

    async def test_a_claim_resumes_before_a_row_it_passed_over(self, store: Store) -> None:
        (a,) = await running(store, 1)
        keys = ["k2", "k2", "k3", "k2", "k4"]
        fx = Effects([OutboxMessage("out", n, b"x", k) for n, k in enumerate(keys, 1)])
        await store.complete_many("w", [succeeded(a, fx)])
        first = await store.claim_outbox("out", 1, 30.0)
        assert [r.n for r in first] == [1]
        # k2 is in flight: its rows 2 and 4 are passed over, 3 and 5 taken.
        second = await store.claim_outbox("out", 10, 30.0, after=first.resume)
        assert [r.n for r in second] == [3, 5]
        # The first batch is confirmed; the next claim must start before row 2, or row 4
        # (k2) would go out before row 2 (k2).
        third = await store.claim_outbox(
            "out", 10, 30.0, after=second.resume, sent=[r.id for r in first]
        )
        assert [r.n for r in third] == [2, 4]

    async def test_a_claim_resumes_before_a_passed_over_row_of_a_later_commit(
        self, store: Store
    ) -> None:
        """As above, each row written by its own job's commit (its own created_at): the
        position the next claim starts from is the passed-over row's, not another's."""
        jobs = await running(store, 5)
        for job, key in zip(jobs, ["k2", "k2", "k3", "k2", "k4"], strict=True):
            fx = Effects([OutboxMessage("out", 1, b"x", key)])
            assert await store.complete_many("w", [succeeded(job, fx)]) == 1
        first = await store.claim_outbox("out", 1, 30.0)
        assert [r.job_id for r in first] == jobs[:1]
        second = await store.claim_outbox("out", 10, 30.0, after=first.resume)
        assert [r.job_id for r in second] == [jobs[2], jobs[4]]
        third = await store.claim_outbox(
            "out",
            10,
            30.0,
            after=second.resume,
            sent=[r.id for r in first],
            leases=[first.lease],
        )
        assert [r.job_id for r in third] == [jobs[1], jobs[3]]
        assert await leases_left(store) == 2  # second's and third's; first's went with its mark

    async def test_a_mark_of_part_of_a_batch_keeps_the_rest_leased(self, store: Store) -> None:
        """A relay marks what the broker confirmed, out of its own lease: the rows not
        confirmed stay in flight (their key waits) until settled; a whole batch marked in
        any order, or through the next claim, leaves no lease behind."""
        (a,) = await running(store, 1)
        keys = ["k1", "k2", "k3"]
        fx = Effects([OutboxMessage("out", n, b"x", k) for n, k in enumerate(keys, 1)])
        await store.complete_many("w", [succeeded(a, fx)])
        batch = await store.claim_outbox("out", 10, 30.0)
        ids = [r.id for r in batch]
        await store.mark_outbox_sent(ids[:2], [batch.lease])
        assert await leases_left(store) == 1
        assert await store.claim_outbox("out", 10, 30.0) == []  # k3's row is still out
        await store.mark_outbox_sent(ids[2:], [batch.lease])
        assert await leases_left(store) == 0
        assert await store.outbox_pending() == {}

        (b,) = await running(store, 1)
        await store.complete_many("w", [succeeded(b, fx)])
        batch = await store.claim_outbox("out", 10, 30.0)
        await store.mark_outbox_sent([r.id for r in reversed(batch)], [batch.lease])
        assert await leases_left(store) == 0
        assert await store.outbox_pending() == {}

        (c,) = await running(store, 1)
        await store.complete_many("w", [succeeded(c, fx)])
        batch = await store.claim_outbox("out", 10, 30.0)
        ids = [r.id for r in batch]
        # The relay's usual call: the previous batch marked by the next claim.
        assert await store.claim_outbox("out", 10, 30.0, sent=ids[:2], leases=[batch.lease]) == []
        assert await leases_left(store) == 1
        assert await store.claim_outbox("out", 10, 30.0, sent=ids[2:], leases=[batch.lease]) == []
        assert await leases_left(store) == 0
        assert await store.outbox_pending() == {}

    async def test_a_failing_row_is_set_aside_and_its_key_goes_on(self, store: Store) -> None:
        (a,) = await running(store, 1)
        await store.complete_many("w", [succeeded(a, effects(a, 3, key="k"))])
        for attempt in (1, 2):
            rows = await store.claim_outbox("out", 1, 30.0)
            assert [(r.n, r.attempts) for r in rows] == [(1, attempt)]
            parked = await store.fail_outbox([rows[0].id], "refused", 2)
            assert parked == ([] if attempt == 1 else [rows[0].id])
        rest = await store.claim_outbox("out", 10, 30.0)
        assert [r.n for r in rest] == [2, 3], "the key's later rows go on"
        # One refused for good is set aside at once; the other is only freed.
        parked = await store.fail_outbox([r.id for r in rest], "too large", 10, [rest[0].id])
        assert parked == [rest[0].id]
        assert [r.n for r in await store.claim_outbox("out", 10, 30.0)] == [3]
        pending = await store.outbox_pending()
        assert pending["out"][0] == 3, "rows set aside still count as unsent"
        assert pending["out"].set_aside == 2  # the first row, and the one refused for good

    async def _set_aside(self, store: Store, output: str, count: int) -> list[int]:
        """``count`` messages of ``output`` written and refused for good: set aside."""
        (a,) = await running(store, 1)
        fx = Effects([OutboxMessage(output, n, b"x" * n, None) for n in range(1, count + 1)])
        await store.complete_many("w", [succeeded(a, fx)])
        rows = await store.claim_outbox(output, 10, 30.0)
        ids = [r.id for r in rows]
        assert await store.fail_outbox(ids, f"refused by {output}", 10, ids, [rows.lease]) == ids
        return ids

    async def test_set_aside_messages_are_listed_newest_first(self, store: Store) -> None:
        out = await self._set_aside(store, "out", 3)
        other = await self._set_aside(store, "other", 1)
        listed = await store.set_aside_messages("out", 10)
        assert [m.id for m in listed] == out[::-1]
        first = listed[-1]
        assert (first.output, first.n, first.attempts, first.size) == ("out", 1, 1, 1)
        assert first.last_error == "refused by out" and first.failed_at is not None
        assert [m.id for m in await store.set_aside_messages(None, 10)] == [*other, *out[::-1]]
        page = await store.set_aside_messages("out", 2)
        assert [m.id for m in page] == out[:0:-1]
        assert [m.id for m in await store.set_aside_messages("out", 2, page[-1].id)] == out[:1]
        assert await store.set_aside_messages("nothing", 10) == []

    async def test_resent_messages_go_to_the_relay_again(self, store: Store) -> None:
        ids = await self._set_aside(store, "out", 3)
        assert await store.claim_outbox("out", 10, 30.0) == []
        assert await store.resend_set_aside("out", [ids[1], 999_999]) == [ids[1]]
        assert await store.resend_set_aside("other", None) == []  # another output's: none
        again = await store.claim_outbox("out", 10, 30.0)
        assert [(r.id, r.attempts) for r in again] == [(ids[1], 1)]  # counted from zero
        assert await store.resend_set_aside("out") == [ids[0], ids[2]]
        assert (await store.outbox_pending())["out"].set_aside == 0

    async def test_discarded_messages_are_gone_and_nothing_else(self, store: Store) -> None:
        ids = await self._set_aside(store, "out", 2)
        (a,) = await running(store, 1)
        await store.complete_many("w", [succeeded(a, effects(a, 1))])  # one unsent, not aside
        assert await store.discard_set_aside("out", [ids[0]]) == [ids[0]]
        assert [m.id for m in await store.set_aside_messages("out", 10)] == [ids[1]]
        assert await store.discard_set_aside("out") == [ids[1]]
        assert (await store.outbox_pending())["out"] == (1, pytest.approx(0, abs=60), 0)
        assert [r.n for r in await store.claim_outbox("out", 10, 30.0)] == [1]

    async def test_a_lease_frees_exactly_the_rows_settled(self, store: Store) -> None:
        (a,) = await running(store, 1)
        fx = Effects([OutboxMessage("out", n, b"x", f"k{n}") for n in (1, 2, 3)])
        await store.complete_many("w", [succeeded(a, fx)])
        batch = await store.claim_outbox("out", 10, 30.0)
        assert [r.n for r in batch] == [1, 2, 3]
        await store.release_outbox([batch[1].id], "broker away")
        # Only the released row is free; the other two stay leased to their relay.
        again = await store.claim_outbox("out", 10, 30.0)
        assert [(r.n, r.attempts) for r in again] == [(2, 1)]
        await store.mark_outbox_sent([batch[0].id, batch[2].id, again[0].id])
        assert await store.outbox_pending() == {}
        assert await store.claim_outbox("out", 10, 30.0) == []
        assert await leases_left(store) == 0, "a lease emptied is deleted"

    async def test_a_relay_settles_only_what_its_own_lease_still_holds(self, store: Store) -> None:
        """Relay A's lease expired and B took its rows over: A's late release or failure
        must neither free them for a third claim while B sends them nor charge them."""
        (a,) = await running(store, 1)
        await store.complete_many("w", [succeeded(a, effects(a, 2))])
        late = await store.claim_outbox("out", 10, -1.0)
        taken = await store.claim_outbox("out", 10, 30.0)
        assert [r.id for r in taken] == [r.id for r in late]
        ids = [r.id for r in late]
        await store.release_outbox(ids, "relay A stopped", [late.lease])
        assert await store.fail_outbox(ids, "refused", 1, ids, [late.lease]) == []
        assert await store.claim_outbox("out", 10, 30.0) == [], "still B's"
        await store.mark_outbox_sent(ids, [taken.lease])
        assert await store.outbox_pending() == {}
        assert await leases_left(store) == 0

    async def test_an_expired_lease_frees_its_rows_with_an_attempt_counted(
        self, store: Store
    ) -> None:
        """A relay that died: its lease (already past here) is dropped by the next claim,
        which takes the rows again as their second try, and its key's order holds."""
        (a,) = await running(store, 1)
        await store.complete_many("w", [succeeded(a, effects(a, 3, key="k"))])
        lost = await store.claim_outbox("out", 2, -1.0)
        assert [(r.n, r.attempts) for r in lost] == [(1, 1), (2, 1)]
        again = await store.claim_outbox("out", 10, 30.0)
        assert [(r.n, r.attempts) for r in again] == [(1, 2), (2, 2), (3, 1)]
        assert await store.claim_outbox("out", 10, 30.0) == []
        await store.mark_outbox_sent([r.id for r in again])
        assert await store.outbox_pending() == {}


class TestMemoryOutbox(OutboxContract):
    """The contract in memory."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        yield MemoryStore()


class TestPostgresOutbox(OutboxContract):
    """The contract on PostgreSQL."""

    @pytest.fixture
    async def store(self, pg_store: PostgresStore) -> AsyncIterator[Store]:
        yield pg_store

    async def test_a_claim_waiting_its_turn_sees_the_lease_taken_before_it(
        self, store: PostgresStore
    ) -> None:
        """Claims of one output take turns; the one that waited sees the lease the one
        before it committed, so a key in flight there is not handed out again."""
        (a,) = await running(store, 1)
        await store.complete_many("w", [succeeded(a, effects(a, 2, key="k"))])
        async with store._pool.acquire() as conn:
            holding = conn.transaction()
            await holding.start()
            try:
                held = await conn.fetch(
                    store._q["outbox_claim"], "out", 1, 30.0, EARLIEST, 0, [], None
                )
                assert [r["id"] for r in held] != []
                waiting = asyncio.ensure_future(store.claim_outbox("out", 10, 30.0))
                await wait_for(
                    lambda: _waits_on_an_advisory_lock(store), timeout=10, what="a claim waiting"
                )
                assert not waiting.done()
            finally:
                await holding.commit()
        assert await asyncio.wait_for(waiting, 10) == []  # k's second row waits for its first

    @pytest.mark.parametrize("isolation", ["repeatable_read", "serializable"])
    async def test_a_claim_refuses_an_isolation_that_would_hide_the_lease_ahead(
        self, store: PostgresStore, isolation: str
    ) -> None:
        """Under a stricter isolation the claim would read from the snapshot taken before
        its turn, without the lease of the claim ahead: it refuses, with the setting to
        change, and takes nothing."""
        (a,) = await running(store, 1)
        await store.complete_many("w", [succeeded(a, effects(a, 1))])
        async with store._pool.acquire() as conn:
            with pytest.raises(asyncpg.RaiseError, match="needs READ COMMITTED") as raised:
                async with conn.transaction(isolation=isolation):
                    await conn.fetch(
                        store._q["outbox_claim"], "out", 10, 30.0, EARLIEST, 0, [], None
                    )
        assert "default_transaction_isolation" in (raised.value.hint or "")
        # Under READ COMMITTED the same row is there to claim.
        assert [r.id for r in await store.claim_outbox("out", 10, 30.0)] != []

    async def test_a_database_set_to_a_stricter_isolation_refuses_claims_as_a_setting(
        self, store: PostgresStore, database_url: str
    ) -> None:
        """Set for the whole database, the store's claim says so as StoreRefused (the relay
        then waits and retries with its broker connection kept), naming the setting."""
        name = database_url.rsplit("/", 1)[1]
        async with store._pool.acquire() as conn:
            await conn.execute(
                f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = 'repeatable read'"
            )
        strict = await PostgresStore.connect(database_url, "jobwire", min_size=1, max_size=1)
        try:
            with pytest.raises(StoreRefused, match=r"needs READ COMMITTED.* HINT: .*ALTER ROLE"):
                await strict.claim_outbox("out", 10, 30.0)
        finally:
            await strict.close()

    async def test_a_claim_does_not_wait_on_a_relay_settling_an_expired_lease(
        self, store: PostgresStore
    ) -> None:
        """A relay marks the rows of its lease while another's claim expires that lease:
        both lock the lease, then the rows (in that order), and the claim passes over a
        lease being settled, so neither waits on the other (a deadlock before)."""
        (a,) = await running(store, 1)
        await store.complete_many("w", [succeeded(a, effects(a, 2))])
        late = await store.claim_outbox("out", 10, -1.0)  # its lease is already past
        async with store._pool.acquire() as conn:
            settling = conn.transaction()
            await settling.start()
            try:
                await conn.execute(store._q["outbox_mark_sent"], [r.id for r in late], [late.lease])
                # The relay's mark is not committed yet: its rows look unsent, their
                # lease expired, so the claim may take them (a lost lease's rows go again).
                again = await asyncio.wait_for(store.claim_outbox("out", 10, 30.0), 10)
            finally:
                await settling.commit()
        assert [r.id for r in again] == [r.id for r in late]
        await store.mark_outbox_sent([r.id for r in again])
        assert await store.outbox_pending() == {}


@pytest.mark.parametrize("kind", ["memory", "postgres"])
async def test_retention_purges_sent_rows_only(kind: str, database_url: str) -> None:
    store: Store = (
        MemoryStore()
        if kind == "memory"
        else await PostgresStore.connect(database_url, "jobwire", min_size=1, max_size=2)
    )
    try:
        a, b = await running(store, 2)
        await store.complete_many("w", [succeeded(a, effects(a, 3)), succeeded(b, effects(b, 2))])
        rows = await store.claim_outbox("out", 3, 30.0)
        await store.mark_outbox_sent([r.id for r in rows])
        retention = RetentionConfig.model_validate({"outbox_sent": "0s", "batch": 2})
        await Maintenance(store, retention).purge()
        assert await store.outbox_pending() == {"out": (2, pytest.approx(0, abs=60), 0)}
        left = await store.claim_outbox("out", 10, 30.0)
        assert [(r.job_id, r.n) for r in left] == [(b, 1), (b, 2)]
    finally:
        await store.close()
