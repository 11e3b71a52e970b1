"""The relay against the memory store and a scripted publisher: batches, failures that
release rows and back off, order per key, marks only after the confirm."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from jobwire.effects import EffectfulOutcome, Effects, OutboxMessage, OutboxRow, Published
from jobwire.models import JobSpec, JobStatus
from jobwire.outbox import OutboxRelay, _settle
from jobwire.store.base import ClaimRequest
from jobwire.store.memory import MemoryStore
from tests.support.waiting import wait_for


class ScriptedPublisher:
    """Confirms everything, except: refuses to connect ``down`` times, and in its second
    publish confirms only the first half of the batch (a connection lost mid-batch)."""

    def __init__(self, down: int = 0) -> None:
        self.down = down
        self.sent: list[str] = []
        self.calls = 0
        self.connects = 0

    async def connect(self) -> None:
        self.connects += 1
        if self.down > 0:
            self.down -= 1
            raise ConnectionRefusedError("broker away")

    async def publish(self, rows: Sequence[OutboxRow], timeout: float) -> Published:
        self.calls += 1
        if self.calls == 2:
            half = rows[: len(rows) // 2]
            self.sent += [r.message_id for r in half]
            return Published(frozenset(r.id for r in half), "connection lost")
        self.sent += [r.message_id for r in rows]
        return Published(frozenset(r.id for r in rows))

    async def close(self) -> None:
        return None


async def outbox_of(store: MemoryStore, jobs: int, per_job: int) -> list[int]:
    """``jobs`` succeeded jobs with ``per_job`` messages each, a key per job."""
    await store.enqueue_many([JobSpec("pub") for _ in range(jobs)])
    claimed = await store.claim(ClaimRequest({"default": jobs}, jobs, "w", 30.0))
    outcomes = [
        EffectfulOutcome(
            j.id,
            1,
            JobStatus.SUCCEEDED,
            0.0,
            effects=Effects(
                [OutboxMessage("out", n, b"x", f"k{j.id}") for n in range(1, per_job + 1)]
            ),
        )
        for j in claimed
    ]
    assert await store.complete_many("w", outcomes) == jobs
    return [j.id for j in claimed]


async def test_relay_sends_everything_once_in_key_order_through_failures() -> None:
    store = MemoryStore()
    ids = await outbox_of(store, jobs=10, per_job=20)
    publisher = ScriptedPublisher(down=2)
    relay = OutboxRelay("out", publisher, store, batch_size=30, poll_interval=0.01)
    relay._backoff.initial = relay._backoff.maximum = 0.01
    await relay.start()
    try:
        await wait_for(lambda: _all_sent(store), timeout=10, what="every row sent")
    finally:
        await relay.stop()
    assert publisher.connects == 4  # two refused, one dropped after the partial batch
    expected = {f"jobwire-{j}-{n}" for j in ids for n in range(1, 21)}
    assert set(publisher.sent) == expected
    assert len(publisher.sent) == len(expected), "nothing confirmed was sent twice"
    for job in ids:
        order = [
            int(m.rsplit("-", 1)[1]) for m in publisher.sent if m.startswith(f"jobwire-{job}-")
        ]
        assert order == list(range(1, 21)), f"job {job}: {order}"
    assert relay.counters.failed > 0 and relay.counters.sent == 200


async def test_a_stopped_relay_gives_its_rows_back() -> None:
    store = MemoryStore()
    await outbox_of(store, jobs=1, per_job=5)
    started = asyncio.Event()

    class Hanging(ScriptedPublisher):
        async def publish(self, rows: Sequence[OutboxRow], timeout: float) -> Published:
            started.set()
            await asyncio.sleep(3600)
            raise AssertionError("not reached")

    relay = OutboxRelay("out", Hanging(), store, poll_interval=0.01)
    await relay.start()
    await asyncio.wait_for(started.wait(), 5)
    await relay.stop()
    again = await store.claim_outbox("out", 10, 30.0)
    assert len(again) == 5, "released at once, not after the lease"


async def _all_sent(store: MemoryStore) -> bool:
    return await store.outbox_pending() == {}


async def keyed_outbox(store: MemoryStore, keys: list[str]) -> int:
    """One succeeded job whose messages carry these keys, in this order; the job's id."""
    (job_id,) = await outbox_jobs(store, 1)
    fx = Effects([OutboxMessage("out", n, f"{k}".encode(), k) for n, k in enumerate(keys, 1)])
    outcome = EffectfulOutcome(job_id, 1, JobStatus.SUCCEEDED, 0.0, effects=fx)
    assert await store.complete_many("w", [outcome]) == 1
    return job_id


async def outbox_jobs(store: MemoryStore, count: int) -> list[int]:
    """``count`` jobs claimed by worker "w"."""
    await store.enqueue_many([JobSpec("pub") for _ in range(count)])
    return [j.id for j in await store.claim(ClaimRequest({"default": count}, count, "w", 30.0))]


class OutOfOrder(ScriptedPublisher):
    """Publishes rows concurrently (as AMQP and MQTT do): in its first publish the broker
    confirms every row but the first (a row of key k0), later ones confirm everything."""

    async def publish(self, rows: Sequence[OutboxRow], timeout: float) -> Published:
        self.calls += 1
        took = rows[1:] if self.calls == 1 else rows
        self.sent += [r.message_id for r in took]
        return Published(frozenset(r.id for r in took), None if took == rows else "nack")


async def test_a_failed_row_holds_back_its_keys_later_rows_in_the_batch() -> None:
    store = MemoryStore()
    keys = [f"k{i % 3}" for i in range(30)]  # interleaved: k0 k1 k2 k0 k1 k2 ...
    job = await keyed_outbox(store, keys)
    publisher = OutOfOrder()
    relay = OutboxRelay("out", publisher, store, batch_size=4, poll_interval=0.01)
    relay._backoff.initial = relay._backoff.maximum = 0.01
    await relay.start()
    try:
        await wait_for(lambda: _all_sent(store), timeout=10, what="every row sent")
    finally:
        await relay.stop()
    assert sum(r.sent_at is not None for r in store.outbox) == 30
    # Row 4 (k0) reached the broker before row 1 (k0), which failed: it must be sent again
    # after row 1, so the last copy of each message arrives in key order.
    for key in ("k0", "k1", "k2"):
        wanted = [f"jobwire-{job}-{n}" for n, k in enumerate(keys, 1) if k == key]
        last = {m: i for i, m in enumerate(publisher.sent)}
        assert sorted(wanted, key=last.__getitem__) == wanted, f"{key}: {publisher.sent}"


class Refusing(ScriptedPublisher):
    """Refuses every publish of one message (and, like STOMP after an ERROR, confirms
    nothing after it in its batch); confirms everything else."""

    def __init__(self, bad: str) -> None:
        super().__init__()
        self.bad = bad
        self.tries = 0

    async def publish(self, rows: Sequence[OutboxRow], timeout: float) -> Published:
        took: list[OutboxRow] = []
        for r in rows:
            if r.message_id == self.bad:
                self.tries += 1
                break
            took.append(r)
        self.sent += [r.message_id for r in took]
        error = None if len(took) == len(rows) else "STOMP ERROR: too large"
        return Published(frozenset(r.id for r in took), error)


async def test_a_row_the_broker_always_refuses_is_set_aside_and_the_rest_go_on() -> None:
    store = MemoryStore()
    job = await keyed_outbox(store, ["k"] * 5 + ["j"] * 5)
    publisher = Refusing(f"jobwire-{job}-2")
    relay = OutboxRelay("out", publisher, store, batch_size=10, poll_interval=0.01, max_attempts=3)
    relay._backoff.initial = relay._backoff.maximum = 0.01
    await _run_until_all_but_one_sent(relay, store, 9)
    assert publisher.tries == 3
    (bad,) = [r for r in store.outbox if r.sent_at is None]
    assert bad.n == 2 and bad.failed_at is not None and bad.last_error
    # The rows behind it were held back, not charged: none of them was set aside.
    assert all(r.attempts <= 1 for r in store.outbox if r.n != 2)
    assert relay.describe()["parked"] == 1
    assert await store.outbox_pending() == {"out": (1, 0.0, 1)}  # the one set aside


async def _run_until_all_but_one_sent(relay: OutboxRelay, store: MemoryStore, n: int) -> None:
    """Run the relay until ``n`` rows are sent (every row but the bad one), then stop it."""
    await relay.start()
    try:
        await wait_for(
            lambda: _sent_count(store, n), timeout=10, what="every row but the bad one sent"
        )
    finally:
        await relay.stop()


async def _sent_count(store: MemoryStore, n: int) -> bool:
    return sum(r.sent_at is not None for r in store.outbox) >= n


def test_the_lease_outlasts_a_batch_waiting_then_publishing() -> None:
    # Claimed while the batch ahead publishes (up to publish_timeout), then published
    # (up to publish_timeout): the lease must outlast both, with room to mark.
    relay = OutboxRelay("out", ScriptedPublisher(), MemoryStore(), publish_timeout=30.0)
    assert relay.lease >= 3 * 30.0


class RefusingForGood(ScriptedPublisher):
    """Confirms every row but one, which it reports as refused for good (``permanent``)."""

    def __init__(self, bad: str) -> None:
        super().__init__()
        self.bad = bad

    async def publish(self, rows: Sequence[OutboxRow], timeout: float) -> Published:
        self.calls += 1
        took = [r for r in rows if r.message_id != self.bad]
        self.sent += [r.message_id for r in took]
        never = frozenset(r.id for r in rows if r.message_id == self.bad)
        return Published(frozenset(r.id for r in took), "too large" if never else None, never)


async def test_a_row_refused_for_good_is_set_aside_without_dropping_the_connection() -> None:
    store = MemoryStore()
    job = await keyed_outbox(store, ["k"] * 5 + ["j"] * 5)
    publisher = RefusingForGood(f"jobwire-{job}-7")
    relay = OutboxRelay("out", publisher, store, batch_size=3, poll_interval=0.01)
    # A backoff long enough that a disconnect would outlast the wait below.
    relay._backoff.initial = relay._backoff.maximum = 30.0
    await _run_until_all_but_one_sent(relay, store, 9)
    (bad,) = [r for r in store.outbox if r.sent_at is None]
    assert bad.n == 7 and bad.failed_at is not None and bad.attempts == 1
    assert publisher.connects == 1
    assert relay.describe()["parked"] == 1


class LostAfterARefusal(ScriptedPublisher):
    """First publish: the first row refused for good, then the connection lost (nothing
    confirmed); every publish after it confirms all."""

    async def publish(self, rows: Sequence[OutboxRow], timeout: float) -> Published:
        self.calls += 1
        if self.calls == 1:
            return Published(frozenset(), "connection lost", frozenset({rows[0].id}))
        self.sent += [r.message_id for r in rows]
        return Published(frozenset(r.id for r in rows))


async def test_the_row_the_broker_stopped_at_is_charged_not_one_refused_before_it() -> None:
    store = MemoryStore()
    await keyed_outbox(store, ["a", "b", "c"])
    relay = OutboxRelay("out", LostAfterARefusal(), store, batch_size=10, poll_interval=0.01)
    relay._backoff.initial = relay._backoff.maximum = 0.01
    await _run_until_all_but_one_sent(relay, store, 2)
    refused, stopped_at, waited = store.outbox
    assert refused.failed_at is not None and refused.sent_at is None
    # Charged with the lost connection, then sent: two tries. The row behind it waited.
    assert (stopped_at.attempts, waited.attempts) == (2, 1)


def test_rows_of_no_key_and_no_job_stand_alone_when_one_fails() -> None:
    """As the claim sees them: a row with neither key nor job (written by hand) waits for no
    other, so a confirmed one is not failed for another's failure."""
    rows = [OutboxRow(i, None, 1, None, {}, b"x") for i in (1, 2)]
    confirmed, failed = _settle(rows, Published(frozenset({2}), "lost"))
    assert (confirmed, [r.id for r in failed]) == ([2], [1])
