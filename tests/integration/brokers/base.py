"""The broker suite, written once (issue 19): what every broker source must do.

``BrokerSuite`` holds the common tests; a subclass per broker (test_amqp.py, test_stomp.py,
test_kafka.py, test_mqtt.py) says how to reach its broker and holds the tests that only
that broker has. A subclass provides:

- ``target``, a fixture: what the source consumes from (queue, destination, topic), made
  fresh for the test and removed after it;
- ``source(target)``: the broker-specific part of the source config (the one config
  builder, ``config``/``source_config``, adds name, route and the rest);
- ``publish(target, messages)``: an independent client (tests/support/hostile.py: pika,
  stomp.py, kafka-python, paho-mqtt) that blocks until the broker confirmed every message;
- ``route_extra``/``dedup_route``: what makes a message's ``ident`` its dedup key where the
  protocol does not carry a message id (Kafka: ``json:$.id``; MQTT: user property msg-id);
- ``outage(target)``: how the broker drops the consumer's connection (rabbitmqctl
  close_all_connections for RabbitMQ; a TCP proxy cut for tansu and Mosquitto);
- ``left_behind``: deliveries the broker still holds unsettled, where it can tell.

The common tests: N messages become N succeeded jobs; the same message twice makes one job
and both are settled; poison becomes failed jobs with reasons while the good messages
around it succeed; a daemon killed (failpoint) between commit and ack makes no duplicate
after a restart; the consumer reconnects after the broker drops its connection (twice).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from jobwire.adapters.base import Adapter
from jobwire.app import Daemon as InProcessDaemon
from jobwire.config import Config
from tests.support import hostile as h
from tests.support.daemon import Daemon as DaemonProcess
from tests.support.daemon import one_source_config
from tests.support.inprocess import running_daemon
from tests.support.proxy import TcpProxy
from tests.support.rows import assert_exactly, fetch, job_count, jobs_at_least
from tests.support.waiting import wait_for

# Every common test reads the handler from the body, as a foreign producer's message says.
ROUTE = {"handler_from": "json:$.type"}


def message(i: int, ident: str | None = None, handler: str = "echo") -> h.Outgoing:
    """Message i: a job for ``handler``; its ``ident`` (default m-<i>) is its dedup key."""
    ident = ident or f"m-{i}"
    return h.Outgoing(json.dumps({"type": handler, "i": i, "id": ident}).encode(), ident)


def messages(n: int, start: int = 0) -> list[h.Outgoing]:
    """Messages start..start+n."""
    return [message(i) for i in range(start, start + n)]


@dataclass
class Outage:
    """The reconnect test's setting: the target to consume from and publish to, overrides
    of the source config (a proxy's address, short keep-alives), and ``drop``, which makes
    the broker side end the consumer's connection (and returns once it may come back)."""

    target: Any
    drop: Callable[[Adapter], Awaitable[None]]
    source: dict[str, Any] = field(default_factory=dict)


async def rabbitmqctl(*args: str, timeout: float = 60) -> None:
    """Run rabbitmqctl; it must succeed."""
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert await asyncio.wait_for(proc.wait(), timeout) == 0, f"rabbitmqctl {args} failed"


async def cut_proxy(proxy: TcpProxy, adapter: Adapter) -> None:
    """Drop every connection through ``proxy``; restore it once the source noticed."""
    proxy.cut()
    try:
        await wait_for(
            lambda: adapter.state.value in ("down", "connecting"),
            timeout=30,
            what="the source noticed the cut",
        )
    finally:
        proxy.restore()


class BrokerSuite(abc.ABC):
    """The common tests; a subclass per broker (see the module's docstring)."""

    source_name: ClassVar[str] = "src"
    route_extra: ClassVar[dict[str, Any]] = {}  # every route gets these (MQTT: its dedup key)
    dedup_route: ClassVar[dict[str, Any]] = {}  # the route of the redelivery test
    kill_source_extra: ClassVar[dict[str, Any]] = {}  # source settings of the kill test
    many: ClassVar[int] = 1000  # messages in the "N messages, N jobs" test
    concurrency: ClassVar[int] = 32
    ordered: ClassVar[bool] = True  # one queue in order (Kafka: partitions, no order across)

    # --- what a broker provides -----------------------------------------------------------

    @pytest.fixture
    def target(self) -> Any:  # pragma: no cover - per broker
        """What the source consumes from, fresh for the test, removed afterwards."""
        raise NotImplementedError

    @abc.abstractmethod
    def source(self, target: Any) -> dict[str, Any]:
        """The broker-specific part of the source config."""

    @abc.abstractmethod
    def publish(self, target: Any, outgoing: Sequence[h.Outgoing]) -> list[str | None]:
        """Publish with an independent client, every message confirmed (blocking)."""

    @abc.abstractmethod
    def outage(self, target: Any) -> contextlib.AbstractAsyncContextManager[Outage]:
        """The reconnect test's setting (see Outage)."""

    async def left_behind(self, target: Any, database_url: str, published: int) -> int | None:
        """After the daemon stopped: deliveries the broker holds unsettled (None: unknown)."""
        return None

    def prepare_offline(self, target: Any, config: Path, tmp_path: Path) -> None:
        """Before publishing to a source whose daemon is not running (a queue, a session)."""
        return None  # an optional hook

    async def check_many(self, target: Any, database_url: str, daemon: InProcessDaemon) -> None:
        """More checks at the end of the N-messages test, the daemon still running."""
        return None  # an optional hook

    async def check_many_stopped(self, target: Any, database_url: str, n: int) -> None:
        """More checks at the end of the N-messages test, after the stop."""
        return None  # an optional hook

    async def consuming_again(self, target: Any) -> None:
        """After a reconnect: whatever the broker shows of a consumer being back."""
        return None  # an optional hook

    def check_restarted(self, second: DaemonProcess) -> None:
        """The kill test's second daemon, after it stopped."""
        return None  # an optional hook

    deletable: ClassVar[bool] = False  # whether delete_target can delete what is consumed

    async def delete_target(self, target: Any) -> None:
        """Delete what the source consumes from, as an operator might (RabbitMQ then
        cancels the consumer); only where ``deletable``."""
        raise NotImplementedError

    # --- the one config builder -----------------------------------------------------------

    def source_config(
        self, target: Any, route: dict[str, Any] | None = None, **extra: Any
    ) -> dict[str, Any]:
        """A source of this broker: name, route (with route_extra) and ``extra`` settings."""
        return {
            "name": self.source_name,
            "route": {**self.route_extra, **(route or {"handler": "noop"})},
            **self.source(target),
            **extra,
        }

    def config(
        self,
        database_url: str,
        target: Any,
        route: dict[str, Any] | None = None,
        workers: dict[str, Any] | None = None,
        **extra: Any,
    ) -> Config:
        """An in-process daemon's config: this database, the one source, fast polling."""
        return Config.model_validate(
            {
                "database": {"url": database_url},
                "workers": {
                    "poll_interval": "200ms",
                    "concurrency": self.concurrency,
                    **(workers or {}),
                },
                "sources": [self.source_config(target, route, **extra)],
            }
        )

    async def send(self, target: Any, outgoing: Sequence[h.Outgoing]) -> list[str | None]:
        """``publish`` from a thread; every message must be confirmed."""
        keys = await asyncio.to_thread(self.publish, target, outgoing)
        assert len(keys) == len(outgoing)
        return keys

    # --- the common tests -----------------------------------------------------------------

    async def test_n_messages_become_n_succeeded_jobs(self, database_url: str, target: Any) -> None:
        n = self.many
        async with running_daemon(self.config(database_url, target, ROUTE)) as daemon:
            await self.send(target, messages(n))

            async def all_succeeded() -> bool:
                return await job_count(database_url, "status = 'succeeded'") == n

            await wait_for(all_succeeded, timeout=90, what=f"{n} succeeded jobs")
            counters = daemon.sources[0].intake.counters
            await wait_for(lambda: counters.acked == n, what=f"{n} deliveries acked")
            assert (counters.received, counters.stored, counters.duplicate) == (n, n, 0)
            await self.check_many(target, database_url, daemon)
        await assert_exactly(database_url, n)
        rows = await fetch(database_url, "SELECT payload, source, dedup_key FROM jobwire.jobs")
        assert sorted(json.loads(r["payload"])["i"] for r in rows) == list(range(n))
        assert {r["source"] for r in rows} == {self.source_name}
        assert all(r["dedup_key"].startswith(f"{self.source_name}:") for r in rows)
        assert await self.left_behind(target, database_url, n) in (None, 0)
        await self.check_many_stopped(target, database_url, n)

    async def test_the_same_message_twice_makes_one_job_and_both_are_settled(
        self, database_url: str, target: Any
    ) -> None:
        config = self.config(database_url, target, {**ROUTE, **self.dedup_route})
        async with running_daemon(config) as daemon:
            await self.send(target, [message(1, "same"), message(2, "same"), message(3, "other")])
            counters = daemon.sources[0].intake.counters
            await wait_for(lambda: counters.acked == 3, what="three deliveries acked")
            assert (counters.received, counters.stored, counters.duplicate) == (3, 2, 1)

            async def both_ran() -> bool:
                return await job_count(database_url, "status = 'succeeded'") == 2

            await wait_for(both_ran, what="the two jobs ran")
        rows = await fetch(database_url, "SELECT dedup_key, payload FROM jobwire.jobs")
        src = self.source_name
        assert sorted(r["dedup_key"] for r in rows) == [f"{src}:other", f"{src}:same"]
        kept = sorted(json.loads(r["payload"])["i"] for r in rows)
        assert kept == [1, 3] if self.ordered else kept in ([1, 3], [2, 3])  # the first kept
        assert await self.left_behind(target, database_url, 3) in (None, 0)

    async def test_poison_fails_with_reasons_and_the_good_messages_around_it_succeed(
        self, database_url: str, target: Any
    ) -> None:
        too_big = b'{"type": "echo", "pad": "%s"}' % (b"x" * 200)
        poison = {
            b"{not json": "body is not valid JSON",
            b'{"type": "os:system"}': (
                "handler 'os:system' (from json:$.type) is not in the allow-list"
            ),
            b'{"no_type": 1}': "no handler: json:$.type is missing",
            too_big: f"body of {len(too_big)} bytes exceeds max_body_bytes 100",
            b"\x00\x01": (
                "route reads json:$.type but the body is application/octet-stream, not JSON"
            ),
        }
        outgoing = [
            message(1, "good-1"),
            *(
                h.Outgoing(
                    body,
                    f"bad-{n}",
                    content_type="application/octet-stream"
                    if body == b"\x00\x01"
                    else "application/json",
                )
                for n, body in enumerate(poison)
            ),
            message(2, "good-2"),
        ]
        config = self.config(database_url, target, ROUTE, max_body_bytes=100)
        async with running_daemon(config) as daemon:
            await self.send(target, outgoing)

            async def all_finished() -> bool:
                done = await job_count(database_url, "status IN ('failed', 'succeeded')")
                return done == len(outgoing)

            await wait_for(all_finished, what=f"{len(outgoing)} jobs finished")
            counters = daemon.sources[0].intake.counters
            await wait_for(lambda: counters.acked == len(outgoing), what="all acked")
        rows = await fetch(
            database_url, "SELECT status, last_error, body, payload FROM jobwire.jobs"
        )
        assert len(rows) == len(outgoing)
        succeeded = sorted(
            json.loads(r["payload"])["i"] for r in rows if r["status"] == "succeeded"
        )
        assert succeeded == [1, 2]
        failed = {bytes(r["body"]): r["last_error"] for r in rows if r["status"] == "failed"}
        assert set(failed) == set(poison)  # each failed with its raw body kept
        for body, reason in poison.items():
            assert failed[body].startswith(reason), (body, failed[body])
        assert await self.left_behind(target, database_url, len(outgoing)) in (None, 0)

    def test_killed_between_commit_and_ack_makes_no_duplicate_after_restart(
        self, database_url: str, target: Any, tmp_path: Path
    ) -> None:
        n = 500
        source = self.source_config(
            target, {"handler": "noop"}, batch_size=50, **self.kill_source_extra
        )
        config = one_source_config(tmp_path, database_url, source, poll_interval="200ms")
        self.prepare_offline(target, config, tmp_path)
        assert len(self.publish(target, messages(n))) == n
        killed = DaemonProcess(
            config, tmp_path / "killed.log", env={"JOBWIRE_FAILPOINT": "intake.after_commit"}
        )
        assert killed.wait(60) == -9  # killed itself right after its first commit
        committed = asyncio.run(job_count(database_url))
        assert 0 < committed < n  # that batch was stored, but never acked

        second = DaemonProcess(config, tmp_path / "second.log")
        try:
            second.wait_ready()
            asyncio.run(
                wait_for(lambda: jobs_at_least(database_url, n), timeout=60, what=f"{n} jobs")
            )
            assert second.terminate() == 0
        finally:
            second.stop_quietly()
        asyncio.run(assert_exactly(database_url, n))  # the redelivered batch made no job
        assert asyncio.run(self.left_behind(target, database_url, n)) in (None, 0)
        self.check_restarted(second)

    async def test_consumer_reconnects_after_the_broker_drops_the_connection(
        self, database_url: str, target: Any
    ) -> None:
        async with self.outage(target) as outage:
            config = self.config(database_url, outage.target, ROUTE, **outage.source)
            async with running_daemon(config) as daemon:
                adapter = daemon.sources[0].adapter
                sent = 0
                for _ in range(2):
                    await self.send(outage.target, messages(10, start=sent))
                    sent += 10
                    await wait_for(
                        lambda s=sent: jobs_at_least(database_url, s), what=f"{sent} jobs"
                    )
                    adapter.last_error = None
                    await outage.drop(adapter)

                    def back_up() -> bool:
                        return adapter.state.value == "up" and adapter.last_error is not None

                    await wait_for(back_up, timeout=60, what="the source reconnected")
                    await self.consuming_again(outage.target)
                await self.send(outage.target, messages(10, start=sent))
                sent += 10
                await wait_for(
                    lambda: jobs_at_least(database_url, sent, "status = 'succeeded'"),
                    timeout=60,
                    what="new messages became jobs after the outages",
                )
        await assert_exactly(database_url, sent)

    async def test_a_consumer_the_broker_cancels_is_noticed_and_comes_back(
        self, database_url: str, target: Any
    ) -> None:
        # RabbitMQ cancels the consumer of a deleted queue and keeps the connection: the
        # source said "up" and consumed nothing until a restart (found by a drill).
        if not self.deletable:
            pytest.skip("nothing the broker cancels a consumer for")
        async with running_daemon(self.config(database_url, target, ROUTE)) as daemon:
            adapter = daemon.sources[0].adapter
            await self.send(target, messages(10))
            await wait_for(lambda: jobs_at_least(database_url, 10), what="10 jobs")
            adapter.last_error = None
            await self.delete_target(target)

            def back_up() -> bool:
                return adapter.state.value == "up" and adapter.last_error is not None

            await wait_for(back_up, timeout=60, what="the source noticed and came back")
            await self.consuming_again(target)
            await self.send(target, messages(10, start=10))
            await wait_for(
                lambda: jobs_at_least(database_url, 20, "status = 'succeeded'"),
                timeout=60,
                what="messages sent after the queue came back became jobs",
            )
        assert adapter.last_error is not None and "cancel" in adapter.last_error.lower()
        await assert_exactly(database_url, 20)


@contextlib.asynccontextmanager
async def proxied(target_port: int, port: int = 0) -> AsyncIterator[TcpProxy]:
    """A TCP proxy to 127.0.0.1:target_port for the test's duration."""
    proxy = await TcpProxy("127.0.0.1", target_port, port=port).start()
    try:
        yield proxy
    finally:
        await proxy.close()
