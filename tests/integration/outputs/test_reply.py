"""Reply-to on real brokers: a source with ``reply: true`` answers each request at its
reply address (AMQP reply_to + correlation_id, MQTT 5 response topic + correlation data),
through the outbox; the answer survives a daemon killed between request and reply, and a
reply to a queue that is gone does not hold up the others."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobwire.config import Config
from jobwire.outbox import OutboxRelay
from tests.integration.outputs.reply_requesters import (
    Requester,
    amqp_requester,
    mqtt_requester,
)
from tests.support import hostile as h
from tests.support.daemon import Daemon, write_config
from tests.support.inprocess import running_daemon
from tests.support.mqtt import Mosquitto
from tests.support.proxy import TcpProxy
from tests.support.rows import fetch, jobs_at_least
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

HANDLER = "tests.integration.outputs.handlers:rpc"


@pytest.fixture
def name() -> Iterator[str]:
    """The source's name and its queue (AMQP) or topic (MQTT): fresh per test."""
    value = f"jw-rpc-{uuid.uuid4().hex[:8]}"
    yield value
    h.delete_amqp_queue(value)


def source(kind: str, name: str, url: str, **route: Any) -> dict[str, Any]:
    """A reply: true source of the ``rpc`` handler on ``url``."""
    where = {"queue": name} if kind == "amqp" else {"topics": [name]}
    return {
        "name": name,
        "type": kind,
        "url": url,
        "reply": True,
        **where,
        "route": {"handler": "rpc", **route},
    }


def config(database_url: str, *sources: dict[str, Any], **workers: Any) -> dict[str, Any]:
    """A daemon's config with these sources and the rpc handler."""
    return {
        "database": {"url": database_url},
        "logging": {"format": "json"},
        "workers": {"poll_interval": "200ms", "concurrency": 8, **workers},
        "handlers": {"rpc": HANDLER},
        "sources": list(sources),
    }


def broker_url(kind: str, port: int | None) -> str:
    """The broker's URL (``port``: a proxy's, or the private Mosquitto's)."""
    if kind == "amqp":
        return f"amqp://guest:guest@127.0.0.1:{port or 5672}/"
    return f"mqtt://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def requester(kind: str, name: str, mosquitto: Mosquitto | None) -> AsyncIterator[Requester]:
    """The protocol's requester for source ``name``."""
    if kind == "amqp":
        async with amqp_requester(name) as amqp:
            yield amqp
    else:
        assert mosquitto is not None
        async with mqtt_requester(mosquitto.port, name) as mqtt:
            yield mqtt


async def reply_rows(database_url: str, output: str) -> list[dict[str, Any]]:
    """The outbox's reply rows of ``output``."""
    rows = await fetch(
        database_url,
        "SELECT job_id, n, key, sent_at, failed_at, attempts FROM jobwire.outbox "
        "WHERE output = $1 ORDER BY id",
        output,
    )
    return [dict(r) for r in rows]


async def jobs(database_url: str) -> list[dict[str, Any]]:
    """Every job: id, status, attempts, reply address."""
    rows = await fetch(
        database_url, "SELECT id, status, attempts, reply FROM jobwire.jobs ORDER BY id"
    )
    # The reply column as JSON (these connections have no jsonb codec).
    return [{**r, "reply": json.loads(r["reply"]) if r["reply"] else None} for r in rows]


async def _all_sent(database_url: str, output: str, count: int) -> bool:
    rows = await reply_rows(database_url, output)
    return len(rows) == count and all(r["sent_at"] is not None for r in rows)


async def _all_final(database_url: str, count: int) -> bool:
    """``count`` jobs, every one finished (a finished job's reply row is written with it)."""
    rows = await jobs(database_url)
    return len(rows) == count and all(
        r["status"] in ("succeeded", "failed", "cancelled") for r in rows
    )


def assert_published_once(relay: OutboxRelay, sent: int, parked: int = 0) -> None:
    """Once its rows are marked: the relay confirmed ``sent`` rows and set ``parked`` aside,
    and no publish failed or was lost (the only ways a row goes out twice). So every reply
    went out once, and once they have all arrived no other copy can still come."""
    c = relay.counters
    assert (c.sent, c.parked, c.failed, c.last_error) == (sent, parked, parked, None)


@pytest.fixture(params=["amqp", "mqtt"])
def kind(request: pytest.FixtureRequest) -> str:
    """The protocol under test."""
    return str(request.param)


@pytest.fixture
def broker(kind: str, request: pytest.FixtureRequest) -> Mosquitto | None:
    """The private Mosquitto for MQTT (RabbitMQ is the machine's)."""
    if kind == "mqtt":
        mosquitto: Mosquitto = request.getfixturevalue("mosquitto")
        return mosquitto
    return None


def port_of(broker: Mosquitto | None) -> int | None:
    """The broker's port (None: RabbitMQ's default)."""
    return broker.port if broker is not None else None


async def test_round_trip_replies_results_and_errors(
    database_url: str, kind: str, broker: Mosquitto | None, name: str
) -> None:
    cfg = Config.model_validate(
        config(database_url, source(kind, name, broker_url(kind, port_of(broker)), max_attempts=1))
    )
    async with requester(kind, name, broker) as req, running_daemon(cfg) as daemon:
        (relay,) = daemon.relays
        await req.request({"n": 1}, "c-1")
        await req.request({"n": 2}, "c-2")
        await req.request({"n": 3, "fail": True}, "c-3")
        await req.request(None, "c-4", raw=b"{not json")  # poison: a failed job, answered
        await req.request({"n": 5}, "c-5", reply=False)  # no address: a job, no reply
        # Every job finished (so no reply row is still to come) and its row sent, once.
        await wait_for(lambda: _all_final(database_url, 5), timeout=30, what="five jobs done")
        await wait_for(
            lambda: _all_sent(database_url, relay.output, 4), timeout=10, what="rows sent"
        )
        assert_published_once(relay, 4)
        await wait_for(lambda: len(req.replies) >= 4, timeout=10, what="four replies")
        rows = await jobs(database_url)
    assert len(rows) == 5 and {r["status"] for r in rows} == {"succeeded", "failed"}
    job_of = {r["reply"]["correlation"]: r["id"] for r in rows if r["reply"] is not None}
    assert len(job_of) == 4, "the request without an address has no reply address"
    got = {r.correlation: r for r in req.replies}
    assert len(req.replies) == 4 and set(got) == {"c-1", "c-2", "c-3", "c-4"}
    assert len({r.message_id for r in req.replies}) == 4
    for correlation, reply in got.items():
        stored = job_of[correlation if kind == "amqp" else _b64(correlation)]
        assert reply.message_id == f"jobwire-{stored}-0"
    assert (got["c-1"].status, got["c-1"].body) == ("succeeded", {"answer": 2, "attempt": 1})
    assert got["c-2"].body == {"answer": 4, "attempt": 1}
    assert got["c-3"].status == "failed"
    assert got["c-3"].body["status"] == "failed"
    assert "request 3 refused, on purpose" in got["c-3"].body["error"]
    assert got["c-4"].status == "failed"
    assert "not valid JSON" in got["c-4"].body["error"]


def _b64(text: str) -> str:
    """The stored form of an MQTT requester's correlation data (b"\\x00" + text)."""
    return base64.b64encode(b"\x00" + text.encode()).decode()


async def test_a_reply_to_a_vanished_queue_does_not_hold_up_the_others(
    database_url: str, name: str
) -> None:
    cfg = Config.model_validate(
        config(database_url, source("amqp", name, broker_url("amqp", None), max_attempts=1))
    )
    async with amqp_requester(name) as req, running_daemon(cfg) as daemon:
        (relay,) = daemon.relays
        assert relay.output == f"reply:{name}"
        gone = req.address
        req.address = f"jw-gone-{uuid.uuid4().hex[:8]}"  # no such queue
        await req.request({"n": 1}, "to-nowhere")
        await wait_for(
            lambda: _all_sent(database_url, relay.output, 1), timeout=30, what="dropped reply"
        )
        req.address = gone
        for i in range(5):
            await req.request({"n": i}, f"c-{i}")
        await wait_for(lambda: len(req.replies) >= 5, timeout=30, what="the later replies")
        await wait_for(
            lambda: _all_sent(database_url, relay.output, 6), timeout=10, what="rows sent"
        )
    assert sorted(str(r.correlation) for r in req.replies) == [f"c-{i}" for i in range(5)]
    assert relay.publisher.dropped == 1  # type: ignore[attr-defined]
    assert relay.counters.failed == 0 and relay.counters.parked == 0
    rows = await reply_rows(database_url, relay.output)
    assert [r["attempts"] for r in rows] == [1] * 6, "no row was tried twice"


@pytest.mark.parametrize("moment", ["after_commit", "mid_handler"])
async def test_a_daemon_killed_between_request_and_reply_replies_once(
    database_url: str,
    kind: str,
    broker: Mosquitto | None,
    name: str,
    moment: str,
    tmp_path: Path,
) -> None:
    """after_commit: the job succeeded and its reply row is committed, but the broker is cut
    off, so it is not sent; the daemon is SIGKILLed, the broker given back, and a new
    daemon sends it. mid_handler: SIGKILLed while the handler runs; the new daemon takes
    the job back after its lease, runs it again, and replies once."""
    target = 5672 if kind == "amqp" else port_of(broker)
    assert target is not None
    proxy = await TcpProxy("127.0.0.1", target).start()
    release = tmp_path / "release"
    path = write_config(
        tmp_path / "jobwire.yaml",
        config(
            database_url,
            source(kind, name, broker_url(kind, proxy.port), max_attempts=3),
            lease="2s",
        ),
    )
    output = f"reply:{name}"
    first = Daemon(path, tmp_path / "first.log")
    second: Daemon | None = None
    try:
        async with requester(kind, name, broker) as req:
            # Subscribed first: an MQTT broker keeps nothing for a session not yet made.
            await asyncio.to_thread(first.wait_event, "source_state", state="up")
            await req.request({"n": 21, "wait_for": str(release)}, "drill")
            await wait_for(lambda: _running(database_url), timeout=30, what="the job running")
            if moment == "after_commit":
                proxy.cut()
                release.touch()
                await wait_for(
                    lambda: _reply_tried(database_url, output), timeout=30, what="reply tried"
                )
                # The relay, cut off, took the row and could not send it.
                await asyncio.to_thread(
                    first.wait_event, "outbox_publish_failed", timeout=30, output=output
                )
            first.kill()
            assert req.replies == []
            release.touch()
            proxy.restore()
            second = Daemon(path, tmp_path / "second.log")
            await wait_for(lambda: req.replies, timeout=60, what="the reply")
            await wait_for(lambda: _all_sent(database_url, output, 1), timeout=10, what="sent")
            # Any copy went to the broker before the row was marked sent: it is delivered
            # before a marker sent now.
            await req.barrier()
            assert await asyncio.to_thread(second.terminate) == 0
        (row,) = await jobs(database_url)
        assert row["status"] == "succeeded"
        (reply,) = req.replies
        assert reply.message_id == f"jobwire-{row['id']}-0"
        assert reply.correlation == "drill" and reply.status == "succeeded"
        attempt = 1 if moment == "after_commit" else 2
        assert reply.body == {"answer": 42, "attempt": attempt}
    finally:
        first.stop_quietly()
        if second is not None:
            second.stop_quietly()
        await proxy.close()


async def _running(database_url: str) -> bool:
    return [r["status"] for r in await jobs(database_url)] == ["running"]


async def _reply_tried(database_url: str, output: str) -> bool:
    """The one reply row is written, unsent, and claimed by the relay: in a lease, or with
    a try counted (a failed publish settles it)."""
    rows = await fetch(
        database_url,
        "SELECT o.sent_at, o.attempts, EXISTS (SELECT 1 FROM jobwire.outbox_leases l"
        " WHERE o.id = ANY(l.ids)) AS leased FROM jobwire.outbox o WHERE o.output = $1",
        output,
    )
    return (
        len(rows) == 1
        and rows[0]["sent_at"] is None
        and (rows[0]["leased"] or rows[0]["attempts"] >= 1)
    )


async def test_a_wildcard_response_topic_fails_its_job_and_holds_up_nothing(
    database_url: str, mosquitto: Mosquitto, name: str
) -> None:
    """Mosquitto forwards a request whose response topic has a wildcard, but no message can
    be published there: the request becomes a failed job saying why, with no reply row,
    and the next request is answered as usual."""
    cfg = Config.model_validate(
        config(database_url, source("mqtt", name, broker_url("mqtt", mosquitto.port)))
    )
    async with mqtt_requester(mosquitto.port, name) as req, running_daemon(cfg) as daemon:
        (relay,) = daemon.relays
        good = req.address
        req.address = f"{good}/+/x"
        await req.request({"n": 1}, "wild")
        await wait_for(lambda: jobs_at_least(database_url, 1), timeout=30, what="the job")
        req.address = good
        await req.request({"n": 2}, "fine")
        await wait_for(lambda: _all_final(database_url, 2), timeout=30, what="both jobs done")
        await wait_for(
            lambda: _all_sent(database_url, relay.output, 1), timeout=10, what="row sent"
        )
        assert_published_once(relay, 1)
        await wait_for(lambda: req.replies, timeout=10, what="the reply")
    failed, answered = await fetch(
        database_url, "SELECT status, last_error, reply FROM jobwire.jobs ORDER BY id"
    )
    assert failed["status"] == "failed" and failed["reply"] is None
    assert "reply address refused" in failed["last_error"]
    assert f"'{good}/+/x' contains a wildcard" in failed["last_error"]
    assert answered["status"] == "succeeded"
    assert [(r.correlation, r.body) for r in req.replies] == [("fine", {"answer": 4, "attempt": 1})]


# Reply addresses no message can be published to (in rows written by hand: the intake
# refuses them).
UNSENDABLE = {
    "mqtt": ["a/+/b", "#", "", None, "/".join(["x"] * 300), "ctl/\x01"],
    "amqp": ["q" * 256],
}


async def test_an_unsendable_reply_row_is_set_aside_and_holds_up_nothing(
    database_url: str, kind: str, broker: Mosquitto | None, name: str
) -> None:
    cfg = Config.model_validate(
        config(database_url, source(kind, name, broker_url(kind, port_of(broker))))
    )
    output, addresses = f"reply:{name}", UNSENDABLE[kind]
    async with requester(kind, name, broker) as req, running_daemon(cfg) as daemon:
        (relay,) = daemon.relays
        # Each address as a row of migration 0015 writes it (a header) and as one written
        # before it (the key); a row without either has no address at all.
        await fetch(
            database_url,
            "INSERT INTO jobwire.outbox (output, n, key, headers, body) "
            "SELECT $1, 0, CASE WHEN h THEN NULL ELSE a END,"
            " CASE WHEN h THEN jsonb_strip_nulls(jsonb_build_object('jobwire-reply-to', a))"
            " ELSE '{}' END, 'x' FROM unnest($2::text[]) AS a, unnest('{t,f}'::bool[]) AS h",
            output,
            addresses,
        )
        count = 2 * len(addresses)
        await req.request({"n": 3}, "after")
        await wait_for(
            lambda: _settled(database_url, output, count + 1), timeout=30, what="rows settled"
        )
        assert_published_once(relay, 1, parked=count)
        await wait_for(lambda: req.replies, timeout=10, what="the reply")
        dropped = getattr(relay.publisher, "dropped", None)
    assert [(r.correlation, r.body) for r in req.replies] == [
        ("after", {"answer": 6, "attempt": 1})
    ]
    # Set aside, counted by the relay (parked) and not as dropped (AMQP's returns only).
    assert dropped == (0 if kind == "amqp" else None)
    rows = await reply_rows(database_url, output)
    bad, good = rows[:-1], rows[-1]
    assert len(bad) == count
    assert all(r["failed_at"] is not None and r["sent_at"] is None for r in bad)
    assert all(r["attempts"] == 1 for r in bad), "set aside at the first try"
    assert good["sent_at"] is not None and good["attempts"] == 1


async def _settled(database_url: str, output: str, count: int) -> bool:
    """``count`` reply rows of ``output``, each sent or set aside."""
    rows = await reply_rows(database_url, output)
    return len(rows) == count and all(
        r["sent_at"] is not None or r["failed_at"] is not None for r in rows
    )
