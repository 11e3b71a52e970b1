"""The output suite, written once: what every broker's output must do. A subclass per broker
(test_amqp.py, test_kafka.py, test_mqtt.py, test_stomp.py) says how to make a destination
(``target``), the output config that publishes to it (``output``), and how an independent
consumer receives what arrives there (``consume``: collects (message id, body) pairs).

The common tests: messages of successful jobs arrive, once each, with the stable id
``jobwire-<job>-<n>``; a failed attempt publishes nothing and a retried job that succeeds
publishes once; child jobs are created only by a successful attempt.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from jobwire.config import Config
from jobwire.models import JobSpec
from jobwire.store.postgres import PostgresStore
from tests.support.inprocess import running_daemon
from tests.support.rows import fetch, scalar
from tests.support.waiting import wait_for

HANDLER = "tests.integration.outputs.handlers:publish_n"


@dataclass
class Received:
    """What an independent consumer got: (message id, body) in arrival order."""

    messages: list[tuple[str | None, bytes]] = field(default_factory=list)

    def ids(self) -> list[str | None]:
        """The message ids, in arrival order."""
        return [i for i, _ in self.messages]

    def distinct(self) -> set[str | None]:
        """The distinct message ids."""
        return set(self.ids())


async def enqueue(database_url: str, specs: list[JobSpec]) -> list[int]:
    """Insert jobs; their ids."""
    store = await PostgresStore.connect(database_url, "jobwire", min_size=1, max_size=2)
    try:
        ids = await store.enqueue_many(specs)
    finally:
        await store.close()
    assert all(i is not None for i in ids)
    return [i for i in ids if i is not None]


async def outbox_counts(database_url: str) -> tuple[int, int]:
    """(rows, rows sent) in the outbox."""
    row = (
        await fetch(
            database_url,
            "SELECT count(*) AS n, count(sent_at) AS sent FROM jobwire.outbox",
        )
    )[0]
    return int(row["n"]), int(row["sent"])


class OutputSuite(abc.ABC):
    """The common tests; a subclass per broker."""

    output_name: ClassVar[str] = "out"

    @pytest.fixture
    def target(self) -> Any:  # pragma: no cover - per broker
        """Where the output publishes, fresh for the test."""
        raise NotImplementedError

    @abc.abstractmethod
    def output(self, target: Any) -> dict[str, Any]:
        """The output's config (type and broker settings)."""

    @abc.abstractmethod
    def consume(self, target: Any) -> contextlib.AbstractAsyncContextManager[Received]:
        """An independent consumer of ``target``, subscribed when entered."""

    def config(self, database_url: str, target: Any, **output: Any) -> Config:
        """An in-process daemon with the one output and the publishing handler."""
        return Config.model_validate(
            {
                "database": {"url": database_url},
                "workers": {"poll_interval": "200ms", "concurrency": 16},
                "retry": {"base": "100ms", "jitter": False, "max_attempts": 3},
                "handlers": {"pub": HANDLER},
                "outputs": {self.output_name: {**self.output(target), **output}},
            }
        )

    async def test_messages_arrive_once_with_stable_ids(
        self, database_url: str, target: Any
    ) -> None:
        async with self.consume(target) as got, running_daemon(self.config(database_url, target)):
            ids = await enqueue(
                database_url, [JobSpec("pub", {"count": 3, "key": f"k{i}"}) for i in range(5)]
            )
            expected = {f"jobwire-{job}-{n}" for job in ids for n in (1, 2, 3)}
            await wait_for(
                lambda: got.distinct() >= expected, timeout=30, what="15 messages arrive"
            )
            await wait_for(
                lambda: _sent_all(database_url, 15), timeout=10, what="15 rows marked sent"
            )
        assert got.distinct() == expected
        bodies = [json.loads(body) for _, body in got.messages]
        assert {(b["job"], b["i"]) for b in bodies} == {(j, i) for j in ids for i in range(3)}
        # Per job (one key each) in n order.
        for job in ids:
            order = [i for i in got.ids() if i and i.startswith(f"jobwire-{job}-")]
            assert order[:3] == [f"jobwire-{job}-{n}" for n in (1, 2, 3)]

    async def test_failed_attempt_publishes_nothing_a_retried_success_once(
        self, database_url: str, target: Any
    ) -> None:
        async with self.consume(target) as got, running_daemon(self.config(database_url, target)):
            failing, retried = await enqueue(
                database_url,
                [
                    JobSpec("pub", {"count": 2, "fail": True, "children": 2}, max_attempts=2),
                    JobSpec("pub", {"count": 2, "fail_first": True, "children": 1}),
                ],
            )
            await wait_for(
                lambda: _statuses(database_url, {failing: "failed", retried: "succeeded"}),
                timeout=30,
                what="one job failed for good, one succeeded on its second attempt",
            )
            await wait_for(
                lambda: got.distinct() >= {f"jobwire-{retried}-1", f"jobwire-{retried}-2"},
                timeout=30,
                what="the retried job's two messages",
            )
            await asyncio.sleep(0)  # the consumer's task takes what already arrived
        rows = await fetch(database_url, "SELECT job_id, n FROM jobwire.outbox ORDER BY id")
        assert [(r["job_id"], r["n"]) for r in rows] == [(retried, 1), (retried, 2)]
        assert sorted(i or "" for i in got.ids()) == [
            f"jobwire-{retried}-1",
            f"jobwire-{retried}-2",
        ]
        children = await fetch(
            database_url,
            "SELECT parent_id, count(*) AS n FROM jobwire.jobs "
            "WHERE parent_id IS NOT NULL GROUP BY parent_id",
        )
        assert [(r["parent_id"], r["n"]) for r in children] == [(retried, 1)]


async def _sent_all(database_url: str, n: int) -> bool:
    sent = await scalar(database_url, "SELECT count(sent_at) FROM jobwire.outbox")
    return int(sent) >= n


async def _statuses(database_url: str, wanted: dict[int, str]) -> bool:
    rows = await fetch(
        database_url, "SELECT id, status FROM jobwire.jobs WHERE id = ANY($1)", list(wanted)
    )
    return {r["id"]: r["status"] for r in rows} == wanted


@contextlib.asynccontextmanager
async def collecting(task_factory: Any) -> AsyncIterator[Received]:
    """Run ``task_factory(received)`` as a task for the block; cancel it after."""
    got = Received()
    task = asyncio.create_task(task_factory(got))
    try:
        yield got
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
