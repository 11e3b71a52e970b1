"""The HTTP webhook source (type: http) against the real PostgreSQL and the in-process daemon.

Not a subclass of tests/integration/brokers/base.py: that suite proves redelivery after a
NACK or a reconnect, and HTTP has none (a refused request is answered 503 and the caller
sends it again). What it proves here: every 2xx answer carries a committed job's id, every
other answer left no job, and a store outage is a 503 until the store is back.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from jobwire.adapters.http.auth import sign
from jobwire.adapters.http.config import SignatureConfig
from jobwire.app import Daemon
from jobwire.config import Config
from tests.support.inprocess import running_daemon
from tests.support.proxy import TcpProxy
from tests.support.rows import fetch, job_count
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)
TOKEN = "hook-token-for-tests-0123456789"
GITHUB_SECRET = "github-secret-for-tests"
STRIPE_SECRET = "whsec_stripe-secret-for-tests"


def source(name: str, path: str, route: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "http", "path": path, "route": route, **extra}


def config(database_url: str, *sources: dict[str, Any], **database: Any) -> Config:
    return Config.model_validate(
        {
            "database": {"url": database_url, **database},
            "workers": {"poll_interval": "200ms", "concurrency": 16},
            "http": {"listen": "127.0.0.1:0"},
            "sources": list(sources),
        }
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def url(daemon: Daemon, path: str) -> str:
    assert daemon.http is not None and daemon.http.port
    return f"http://127.0.0.1:{daemon.http.port}{path}"


async def post(
    session: aiohttp.ClientSession,
    target: str,
    body: bytes | str = b'{"x": 1}',
    headers: dict[str, str] | None = None,
    token: str | None = TOKEN,
) -> tuple[int, Any, Any]:
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = body.encode() if isinstance(body, str) else body
    async with session.post(target, data=data, headers=sent) as response:
        return response.status, await response.json(), response.headers


async def test_a_thousand_posts_become_a_thousand_jobs_and_all_run(
    database_url: str, session: aiohttp.ClientSession
) -> None:
    hooks = source("hooks", "/hooks/load", {"handler": "noop"}, token=TOKEN)
    async with running_daemon(config(database_url, hooks)) as daemon:
        target = url(daemon, "/hooks/load")
        gate = asyncio.Semaphore(50)

        async def one(i: int) -> tuple[int, Any, Any]:
            async with gate:
                return await post(session, target, json.dumps({"i": i}))

        started = time.monotonic()
        answers = await asyncio.gather(*(one(i) for i in range(1000)))
        took = time.monotonic() - started
        assert {status for status, _, _ in answers} == {202}
        ids = {body["id"] for _, body, _ in answers}
        assert len(ids) == 1000 and None not in ids
        assert not any(body["duplicate"] for _, body, _ in answers)

        async def all_ran() -> bool:
            return await job_count(database_url, "status = 'succeeded'") == 1000

        await wait_for(all_ran, timeout=60, what="1,000 jobs succeeded")
        rows = await fetch(
            database_url,
            "SELECT id, payload->>'i' AS i, source FROM jobwire.jobs ORDER BY id",
        )
        assert {r["id"] for r in rows} == ids  # every answered id is a row, and no other
        assert {r["i"] for r in rows} == {str(i) for i in range(1000)}
        assert {r["source"] for r in rows} == {"hooks"}
        stats = daemon.describe_sources()["hooks"]
        assert stats["kind"] == "http" and stats["stored"] == 1000
        assert stats["answers"] == {"202": 1000}
        print(f"1000 POSTs, 50 at a time: {took:.2f}s, {1000 / took:.0f}/s answered after commit")


async def test_the_same_dedup_key_twice_is_one_job_and_both_answers_carry_its_id(
    database_url: str, session: aiohttp.ClientSession
) -> None:
    github = source(
        "github",
        "/hooks/github",
        {"handler_from": "header:X-GitHub-Event", "dedup_key": "header:X-GitHub-Delivery"},
        token=TOKEN,
    )
    queried = source(
        "queried",
        "/hooks/queried",
        {"handler": "echo", "dedup_key": "query:delivery", "priority": "query:priority"},
        token=TOKEN,
    )
    async with running_daemon(config(database_url, github, queried)) as daemon:
        headers = {"x-github-event": "echo", "x-github-delivery": "d-1", "User-Agent": "GitHub"}
        first = await post(session, url(daemon, "/hooks/github"), headers=headers)
        again = await post(session, url(daemon, "/hooks/github"), headers=headers)
        assert (first[0], first[1]["duplicate"]) == (202, False)
        assert (again[0], again[1]) == (200, {"id": first[1]["id"], "duplicate": True})
        # Two at once with a new key: one job, one 202, one 200, the same id.
        headers["x-github-delivery"] = "d-2"
        pair = await asyncio.gather(
            *(post(session, url(daemon, "/hooks/github"), headers=headers) for _ in range(2))
        )
        assert sorted(status for status, _, _ in pair) == [200, 202]
        assert pair[0][1]["id"] == pair[1][1]["id"]

        async with session.get(url(daemon, "/readyz")) as response:
            ready = await response.json()
        assert response.status == 200
        assert {name: s["state"] for name, s in ready["sources"].items()} == {
            "github": "up",
            "queried": "up",
        }

        target = url(daemon, "/hooks/queried?delivery=q-1&priority=7")
        one = await post(session, target)
        two = await post(session, target)
        assert (one[0], two[0], two[1]["id"]) == (202, 200, one[1]["id"])

        rows = await fetch(
            database_url,
            "SELECT source, dedup_key, handler, priority, headers FROM jobwire.jobs ORDER BY id",
        )
        assert [(r["source"], r["dedup_key"], r["handler"], r["priority"]) for r in rows] == [
            ("github", "github:d-1", "echo", 0),
            ("github", "github:d-2", "echo", 0),
            ("queried", "queried:q-1", "echo", 7),
        ]
        kept = json.loads(rows[0]["headers"])
        # Provenance kept; the token never.
        assert kept["X-GitHub-Event"] == "echo" and kept["user-agent"] == "GitHub"
        assert kept["content-type"] == "application/json"
        assert "authorization" not in {k.lower() for k in kept}


async def test_bad_credentials_are_401_and_store_nothing(
    database_url: str, session: aiohttp.ClientSession
) -> None:
    github = SignatureConfig(scheme="github", secret=GITHUB_SECRET)
    stripe = SignatureConfig(scheme="stripe", secret=STRIPE_SECRET, tolerance=300)
    sources = [
        source("tokened", "/hooks/tokened", {"handler": "noop"}, token=TOKEN),
        source(
            "signed",
            "/hooks/signed",
            {"handler": "noop"},
            signature={"scheme": "github", "secret": GITHUB_SECRET},
        ),
        source(
            "stripe",
            "/hooks/stripe",
            {"handler": "noop"},
            signature={"scheme": "stripe", "secret": STRIPE_SECRET},
        ),
    ]
    async with running_daemon(config(database_url, *sources)) as daemon:
        tokened = url(daemon, "/hooks/tokened")
        status, body, headers = await post(session, tokened, token=None)
        assert status == 401 and "bearer token" in body["error"]
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert (await post(session, tokened, token="not-the-token-at-all"))[0] == 401

        signed = url(daemon, "/hooks/signed")
        raw = b'{"action": "opened"}'
        good = {"X-Hub-Signature-256": sign(github, raw)}
        bad = {"X-Hub-Signature-256": sign(github, raw + b" ")}
        assert (await post(session, signed, raw, bad, token=None))[0] == 401
        assert (await post(session, signed, raw, {}, token=None))[0] == 401
        # The signature is over the exact bytes: a changed body fails with the old signature.
        assert (await post(session, signed, raw + b"\n", good, token=None))[0] == 401

        striped = url(daemon, "/hooks/stripe")
        stale = {"Stripe-Signature": sign(stripe, raw, now=time.time() - 3600)}
        assert (await post(session, striped, raw, stale, token=None))[0] == 401
        assert await job_count(database_url) == 0  # nothing stored for any of them

        assert (await post(session, signed, raw, good, token=None))[0] == 202
        fresh = {"Stripe-Signature": sign(stripe, raw)}
        assert (await post(session, striped, raw, fresh, token=None))[0] == 202
        assert await job_count(database_url) == 2


async def test_too_large_is_413_and_bad_input_is_400_with_nothing_stored(
    database_url: str, session: aiohttp.ClientSession
) -> None:
    typed = source(
        "typed",
        "/hooks/typed",
        {"handler_from": "json:$.type"},
        token=TOKEN,
        max_body_bytes=1000,
    )
    async with running_daemon(config(database_url, typed)) as daemon:
        target = url(daemon, "/hooks/typed")
        big = json.dumps({"type": "noop", "pad": "x" * 2000})
        status, body, _ = await post(session, target, big)
        assert status == 413 and "1000 bytes" in body["error"]
        # Not JSON, though the route reads its handler from the JSON body.
        status, body, _ = await post(session, target, b"<xml/>")
        assert status == 400 and "not valid JSON" in body["error"]
        status, body, _ = await post(
            session, target, b"plain", headers={"Content-Type": "text/plain"}
        )
        assert status == 400 and "not JSON" in body["error"]
        status, body, _ = await post(session, target, json.dumps({"type": "os.system"}))
        assert status == 400 and "allow-list" in body["error"]
        status, body, _ = await post(session, target, json.dumps({"other": 1}))
        assert status == 400 and "no handler" in body["error"]
        # Declared gzip, and not gzip: the client's mistake, once a 500 "internal error".
        status, body, _ = await post(
            session, target, b"not gzip at all", headers={"Content-Encoding": "gzip"}
        )
        assert status == 400 and "could not be read" in body["error"]
        async with session.get(target) as response:
            assert response.status == 405  # POST only
        assert await job_count(database_url) == 0
        status, body, _ = await post(session, target, json.dumps({"type": "echo", "n": 1}))
        assert status == 202
        assert await job_count(database_url) == 1
        # Only the database refuses this one (jsonb holds no NUL): kept as a failed job, as
        # a broker message would be, and the caller is told, with that job's id.
        status, body, _ = await post(session, target, b'{"type": "echo", "s": "\\u0000"}')
        assert status == 400 and body["stored"] == "failed" and "refused" in body["error"]
        assert await job_count(database_url, f"id = {body['id']} AND status = 'failed'") == 1
        assert await job_count(database_url) == 2


async def test_store_down_is_503_with_retry_after_and_posts_work_again_after(
    database_url: str, session: aiohttp.ClientSession
) -> None:
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    proxied = database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    hooks = source("hooks", "/hooks/outage", {"handler": "noop"}, token=TOKEN, answer_timeout="10s")
    try:
        async with running_daemon(config(proxied, hooks, command_timeout="2s")) as daemon:
            target = url(daemon, "/hooks/outage")
            assert (await post(session, target, '{"i": 0}'))[0] == 202
            proxy.cut()
            try:
                keyed = {"Idempotency-Key": "retry-1"}
                status, body, headers = await post(session, target, '{"i": 1}', keyed)
                assert status == 503 and headers["Retry-After"] == "5"
                # The store failed while storing it: perhaps during COMMIT, so not "nothing
                # was stored", but how to retry safely, and which request it was.
                assert (
                    "may have been stored" in body["error"] and "Idempotency-Key" in body["error"]
                )
                assert len(body["request_id"]) == 32
                # Held now: answered at once, not queued (and surely not stored).
                status, body, headers = await post(session, target, '{"i": 2}')
                assert status == 503 and headers["Retry-After"] == "5" and body["error"]
                assert "request_id" not in body
                await wait_for(
                    lambda: daemon.describe_sources()["hooks"]["held"] == ["store"],
                    what="the intake holds the source",
                )
            finally:
                proxy.restore()

            async def accepted() -> bool:
                return (await post(session, target, '{"i": 3}'))[0] == 202

            await wait_for(accepted, timeout=30, interval=0.5, what="POSTs accepted again")
            # The uncertain one, retried with its key: stored once whatever happened before.
            retried = await post(session, target, '{"i": 1}', keyed)
            assert retried[0] in (200, 202)
            rows = await fetch(database_url, "SELECT payload->>'i' AS i FROM jobwire.jobs")
            # Exactly the answered ones: the refused requests left no job behind.
            assert sorted(r["i"] for r in rows) == ["0", "1", "3"]
    finally:
        await proxy.close()


async def test_a_signed_delivery_replayed_with_new_headers_is_the_same_job(
    database_url: str, session: aiohttp.ClientSession
) -> None:
    github = SignatureConfig(scheme="github", secret=GITHUB_SECRET)
    stripe = SignatureConfig(scheme="stripe", secret=STRIPE_SECRET)
    sources = [
        source(
            "signed",
            "/hooks/signed",
            {"handler": "echo"},
            signature={"scheme": "github", "secret": GITHUB_SECRET},
        ),
        source(
            "stripe",
            "/hooks/stripe",
            {"handler": "echo"},
            signature={"scheme": "stripe", "secret": STRIPE_SECRET},
        ),
        # With a token the caller is known: its Idempotency-Key is its own to choose.
        source(
            "both",
            "/hooks/both",
            {"handler": "echo"},
            token=TOKEN,
            signature={"scheme": "github", "secret": GITHUB_SECRET},
        ),
    ]
    async with running_daemon(config(database_url, *sources)) as daemon:
        raw = b'{"action": "opened", "n": 1}'
        signed = {"X-Hub-Signature-256": sign(github, raw)}
        target = url(daemon, "/hooks/signed")
        first = await post(session, target, raw, {**signed, "Idempotency-Key": "k-1"}, None)
        assert (first[0], first[1]["duplicate"]) == (202, False)
        # The replay picks a new Idempotency-Key and another event: still the same job.
        replay = {**signed, "Idempotency-Key": "k-2", "X-GitHub-Event": "delete"}
        again = await post(session, target, raw, replay, None)
        assert (again[0], again[1]) == (200, {"id": first[1]["id"], "duplicate": True})

        # Stripe: the same event re-signed later (a retry, or a replay within tolerance).
        target = url(daemon, "/hooks/stripe")
        one = await post(session, target, raw, {"Stripe-Signature": sign(stripe, raw)}, None)
        later = {"Stripe-Signature": sign(stripe, raw, now=time.time() - 10)}
        two = await post(session, target, raw, {**later, "Idempotency-Key": "k-3"}, None)
        assert (one[0], two[0], two[1]["id"]) == (202, 200, one[1]["id"])

        target = url(daemon, "/hooks/both")
        keyed = [{**signed, "Idempotency-Key": key} for key in ("a", "b")]
        answers = [await post(session, target, raw, headers) for headers in keyed]
        assert [status for status, _, _ in answers] == [202, 202]
        # Without an Idempotency-Key, the body's hash: the same body twice is one job.
        plain = [await post(session, target, raw, signed) for _ in range(2)]
        assert [status for status, _, _ in plain] == [202, 200]

        rows = await fetch(database_url, "SELECT source, dedup_key FROM jobwire.jobs ORDER BY id")
        digest = hashlib.sha256(raw).hexdigest()
        assert [(r["source"], r["dedup_key"]) for r in rows] == [
            ("signed", f"signed:sha256:{digest}"),
            ("stripe", f"stripe:sha256:{digest}"),
            ("both", "both:a"),
            ("both", "both:b"),
            ("both", f"both:sha256:{digest}"),
        ]


async def raw_request(port: int | None, path: str, headers: bytes, body: bytes, length: int) -> Any:
    """A request written by hand (bytes aiohttp's client would not send, a body sent only in
    part); the reader and writer of its connection."""
    assert port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n"
    ).encode()
    writer.write(head + headers + b"\r\n" + body)
    await writer.drain()
    return reader, writer


async def status_of(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    try:
        line = await asyncio.wait_for(reader.readline(), 10)
        return int(line.split()[1])
    finally:
        writer.close()


async def test_odd_credentials_are_401_not_500(database_url: str) -> None:
    sources = [
        source("tokened", "/hooks/tokened", {"handler": "noop"}, token=TOKEN),
        source(
            "signed",
            "/hooks/signed",
            {"handler": "noop"},
            signature={"scheme": "github", "secret": GITHUB_SECRET},
        ),
        source(
            "stripe",
            "/hooks/stripe",
            {"handler": "noop"},
            signature={"scheme": "stripe", "secret": STRIPE_SECRET},
        ),
    ]
    async with running_daemon(config(database_url, *sources)) as daemon:
        assert daemon.http is not None
        port, body = daemon.http.port, b"{}"
        cases = [
            ("/hooks/tokened", b"Authorization: Bearer \xff\xfe" + TOKEN.encode() + b"\r\n"),
            ("/hooks/signed", b"X-Hub-Signature-256: sha256=\xff\xfe00\r\n"),
            ("/hooks/stripe", b"Stripe-Signature: t=" + b"9" * 5000 + b",v1=00\r\n"),
            ("/hooks/stripe", b"Stripe-Signature: t=" + b"9" * 40 + b",v1=00\r\n"),
            ("/hooks/stripe", b"Stripe-Signature: t=1,v1=\xff\r\n"),
        ]
        for path, header in cases:
            reader, writer = await raw_request(port, path, header, body, len(body))
            assert await status_of(reader, writer) == 401, (path, header[:40])
        assert daemon.describe_sources()["stripe"]["answers"] == {"401": 3}
        assert await job_count(database_url) == 0


async def test_slow_bodies_are_capped_in_number_and_time(
    database_url: str, session: aiohttp.ClientSession
) -> None:
    github = SignatureConfig(scheme="github", secret=GITHUB_SECRET)
    signed = source(
        "signed",
        "/hooks/slow",
        {"handler": "noop"},
        signature={"scheme": "github", "secret": GITHUB_SECRET},
        max_in_flight=1,
        read_timeout="1s",
    )
    async with running_daemon(config(database_url, signed)) as daemon:
        assert daemon.http is not None
        # An unauthenticated sender starts a body and stalls: it holds the only slot...
        reader, writer = await raw_request(daemon.http.port, "/hooks/slow", b"", b"{", 100)
        await wait_for(
            lambda: daemon.describe_sources()["signed"]["in_flight"] == 1,
            what="the slow request is in flight",
        )
        raw = b'{"n": 1}'
        headers = {"X-Hub-Signature-256": sign(github, raw)}
        status, body, answer = await post(session, url(daemon, "/hooks/slow"), raw, headers, None)
        assert status == 503 and "in flight" in body["error"] and answer["Retry-After"] == "5"
        # ...until its read deadline: 408, and the slot is free again.
        started = time.monotonic()
        assert await status_of(reader, writer) == 408
        assert time.monotonic() - started < 5
        await wait_for(
            lambda: daemon.describe_sources()["signed"]["in_flight"] == 0,
            what="the slot is free",
        )
        status, _, _ = await post(session, url(daemon, "/hooks/slow"), raw, headers, None)
        assert status == 202
        assert await job_count(database_url) == 1


async def _expecting(port: int, path: str, headers: dict[str, str], body: bytes) -> list[bytes]:
    """POST with ``Expect: 100-continue``, the body sent only after a 100; the status
    lines received, in order (the connection is closed by either side after the last)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        head += f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(head.encode() + b"\r\n")
        await writer.drain()
        statuses = []
        async with asyncio.timeout(20):
            while True:
                status = await reader.readline()
                fields = []
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    fields.append(line)
                statuses.append(status.strip())
                if not status.startswith(b"HTTP/1.1 100"):
                    length = next(
                        int(line.split(b":")[1])
                        for line in fields
                        if line.lower().startswith(b"content-length:")
                    )
                    await reader.readexactly(length)
                    return statuses
                writer.write(body)
                await writer.drain()
    finally:
        writer.close()


async def test_expect_100_continue_is_refused_before_the_body_when_the_headers_decide(
    database_url: str,
) -> None:
    hook = source("exp", "/hooks/exp", {"handler": "noop"}, token=TOKEN, max_body_bytes=1000)
    async with running_daemon(config(database_url, hook)) as daemon:
        assert daemon.http is not None and daemon.http.port
        port, auth = daemon.http.port, {"Authorization": f"Bearer {TOKEN}"}
        too_large = await _expecting(port, "/hooks/exp", auth, b"x" * 5000)
        assert too_large == [b"HTTP/1.1 413 Request Entity Too Large"]
        no_token = await _expecting(port, "/hooks/exp", {}, b'{"x": 1}')
        assert no_token == [b"HTTP/1.1 401 Unauthorized"]
        # A request the headers cannot decide is told to go on, and stored.
        fine = await _expecting(port, "/hooks/exp", auth, b'{"x": 1}')
        assert fine == [b"HTTP/1.1 100 Continue", b"HTTP/1.1 202 Accepted"]
        assert await job_count(database_url) == 1
