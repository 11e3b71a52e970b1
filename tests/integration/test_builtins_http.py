"""The ``http`` built-in through the real worker pool, against a local aiohttp server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from jobwire.builtins.hosts import HostPolicy, retry_after_seconds
from jobwire.builtins.http import HttpCall, _Request
from jobwire.builtins.settings import HttpBuiltinConfig
from jobwire.config import Config, ConfigError, parse_config
from jobwire.exceptions import Reject, Retry
from jobwire.handlers import JobContext
from jobwire.models import Job, JobSpec, JobStatus
from jobwire.store.postgres import PostgresStore
from tests.support.inprocess import running_daemon
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

FINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}


class Server:
    """A local web server whose answers the tests choose by path; it logs every request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, float, bytes]] = []  # path, method, time, body
        self.port = 0
        self._hits: dict[str, int] = {}

    def hits(self, path: str) -> list[float]:
        return [t for p, _, t, _ in self.seen if p == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.seen.append((path, request.method, time.monotonic(), await request.read()))
        n = self._hits[path] = self._hits.get(path, 0) + 1
        if path == "/ok":
            return web.Response(text="hello " + "x" * 50)
        if path == "/busy" and n == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        if path == "/flaky" and n == 1:
            return web.Response(status=500, text="try later")
        if path in ("/busy", "/flaky"):
            return web.Response(text="fine now")
        if path == "/slow":
            await asyncio.sleep(5)
            return web.Response(text="too late")
        if path == "/redirect-in":
            raise web.HTTPFound("/ok")
        if path == "/redirect-out":
            raise web.HTTPFound("http://evil.example.org/steal")
        if path == "/whoami":
            return web.Response(text=request.headers.get("Authorization", "anonymous"))
        if path == "/to-localhost":
            raise web.HTTPTemporaryRedirect(f"http://localhost:{self.port}/whoami")
        if path == "/keys":
            got = [request.headers.get(h, "-") for h in ("X-Api-Key", "X-Secret", "User-Agent")]
            return web.Response(text="|".join(got))
        if path == "/keys-to-localhost":
            raise web.HTTPTemporaryRedirect(f"http://localhost:{self.port}/keys")
        if path == "/odd-charset":
            return web.Response(body="héllo".encode(), content_type="text/plain", charset="x-nope")
        if path == "/big":
            return web.Response(body=b"y" * 100_000)
        return web.Response(status=404, text="no such hook")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", srv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.port = runner.addresses[0][1]
    yield srv
    await runner.cleanup()


def daemon_config(database_url: str, **http: Any) -> Config:
    return Config.model_validate(
        {
            "database": {"url": database_url},
            "workers": {"concurrency": 8, "poll_interval": "100ms", "shutdown_timeout": "2s"},
            "retry": {"max_attempts": 3, "base": "10ms", "max": "50ms", "jitter": False},
            "handlers": {"hook": "builtin:http"},
            "builtins": {
                "http": {
                    # The test server is on loopback: allowed here by name and by address.
                    "allow_hosts": ["127.0.0.1"],
                    "allow_addresses": ["127.0.0.1/32"],
                    "max_response_bytes": 1000,
                    "result_body_chars": 20,
                    **http,
                }
            },
        }
    )


async def run_jobs(store: PostgresStore, payloads: dict[str, Any]) -> dict[str, Job]:
    """Enqueue one ``hook`` job per payload and wait until every one is finished."""
    specs = [JobSpec(handler="hook", payload=p, max_attempts=3) for p in payloads.values()]
    ids = await store.enqueue_many(specs)
    jobs: dict[str, Job] = {}

    async def finished() -> bool:
        for name, job_id in zip(payloads, ids, strict=True):
            assert job_id is not None
            job = await store.get(job_id)
            assert job is not None
            jobs[name] = job
        return all(j.status in FINAL for j in jobs.values())

    await wait_for(finished, timeout=30, what="http jobs finished")
    return jobs


async def test_http_answers_through_the_pool(
    database_url: str, pg_store: PostgresStore, server: Server
) -> None:
    base = f"http://127.0.0.1:{server.port}"
    payloads = {
        "ok": {"url": f"{base}/ok", "method": "POST", "json": {"order": 7}},
        "busy": {"url": f"{base}/busy"},
        "flaky": {"url": f"{base}/flaky"},
        "missing": {"url": f"{base}/missing"},
        "slow": {"url": f"{base}/slow", "timeout": "300ms"},
        "redirect_in": {"url": f"{base}/redirect-in"},
        "redirect_out": {"url": f"{base}/redirect-out"},
        "other_host": {"url": f"http://localhost:{server.port}/ok"},
        "big": {"url": f"{base}/big"},
        "bad": {"url": "ftp://127.0.0.1/x"},
    }
    async with running_daemon(daemon_config(database_url)):
        jobs = await run_jobs(pg_store, payloads)

    ok = jobs["ok"]
    assert ok.status == JobStatus.SUCCEEDED, ok.last_error
    assert ok.result["status"] == 200
    assert ok.result["body"] == "hello " + "x" * 14  # result_body_chars: 20
    assert ok.result["truncated"] is True
    assert next((m, b) for p, m, _, b in server.seen if p == "/ok") == ("POST", b'{"order": 7}')

    # 429 with Retry-After: 1: the second attempt waited for it (the backoff alone is 10ms).
    busy = jobs["busy"]
    assert busy.status == JobStatus.SUCCEEDED and busy.attempts == 2, busy.last_error
    first, second = server.hits("/busy")
    assert second - first >= 0.9

    flaky = jobs["flaky"]
    assert flaky.status == JobStatus.SUCCEEDED and flaky.attempts == 2
    assert len(await pg_store.runs(flaky.id)) == 2

    # Other 4xx: failed for good at the first attempt, with the reason.
    missing = jobs["missing"]
    assert missing.status == JobStatus.FAILED and missing.attempts == 1
    assert "HTTP 404" in (missing.last_error or "") and "no such hook" in (missing.last_error or "")

    # Past its timeout each attempt is a retry; after the last one the job fails.
    slow = jobs["slow"]
    assert slow.status == JobStatus.FAILED and slow.attempts == 3
    assert "no answer from 127.0.0.1 within 0.3s" in (slow.last_error or "")

    redirect_in = jobs["redirect_in"]
    assert redirect_in.status == JobStatus.SUCCEEDED
    assert redirect_in.result["url"].endswith("/ok")

    # A redirect off the allow-list is refused before any request leaves for it.
    redirect_out = jobs["redirect_out"]
    assert redirect_out.status == JobStatus.FAILED and redirect_out.attempts == 1
    assert "'evil.example.org' is not in builtins.http.allow_hosts" in (
        redirect_out.last_error or ""
    )

    other = jobs["other_host"]
    assert other.status == JobStatus.FAILED and other.attempts == 1
    assert "'localhost' is not in builtins.http.allow_hosts" in (other.last_error or "")

    big = jobs["big"]
    assert big.status == JobStatus.SUCCEEDED and big.result["truncated"] is True

    assert jobs["bad"].status == JobStatus.FAILED
    assert "must be http:// or https://" in (jobs["bad"].last_error or "")

    # Only the allowed calls reached the server: never the refused host or redirect target.
    paths = {p for p, _, _, _ in server.seen}
    assert paths == {
        "/ok",
        "/busy",
        "/flaky",
        "/missing",
        "/slow",
        "/redirect-in",
        "/redirect-out",
        "/big",
    }


def ctx() -> JobContext:
    return JobContext(job_id=1, attempt=1, max_attempts=3, queue="default", handler="hook")


async def call(cfg: HttpBuiltinConfig, payload: dict[str, Any]) -> Any:
    handler = HttpCall(cfg)
    await handler.start()
    try:
        return await handler(payload, ctx())
    finally:
        await handler.close()


async def test_loopback_is_refused_unless_allowed(server: Server) -> None:
    url = f"http://127.0.0.1:{server.port}/ok"
    listed_only = HttpBuiltinConfig(allow_hosts=["127.0.0.1", "localhost"])
    with pytest.raises(Reject, match=r"127\.0\.0\.1 is loopback, private or link-local"):
        await call(listed_only, {"url": url})
    # A name on the list that resolves to loopback: refused when resolved.
    with pytest.raises(Reject, match=r"localhost resolves to .*refused"):
        await call(listed_only, {"url": f"http://localhost:{server.port}/ok"})
    assert server.seen == []
    allowed = HttpBuiltinConfig(allow_hosts=["127.0.0.1"], allow_addresses=["127.0.0.1"])
    assert (await call(allowed, {"url": url}))["status"] == 200


async def test_a_host_that_never_answers_holds_no_call_to_another_host(server: Server) -> None:
    # aiohttp's default cap of 100 connections in all: 100 calls to a host that never
    # answered held every one, and calls to other hosts waited out their own timeouts.
    arrived = 0
    released = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        nonlocal arrived
        arrived += 1
        await released.wait()
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hang)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    stuck_port = runner.addresses[0][1]
    allowed = HttpBuiltinConfig(allow_hosts=["127.0.0.1"], allow_addresses=["127.0.0.1"])
    handler = HttpCall(allowed)
    await handler.start()
    try:
        stuck = [
            asyncio.create_task(handler({"url": f"http://127.0.0.1:{stuck_port}/h"}, ctx()))
            for _ in range(120)
        ]
        await wait_for(lambda: arrived >= 100, what="100 calls held by the host")
        answer = await handler({"url": f"http://127.0.0.1:{server.port}/ok", "timeout": 5}, ctx())
        assert answer["status"] == 200
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
    finally:
        await handler.close()
        released.set()
        await runner.cleanup()


@pytest.mark.parametrize(
    "answer",
    [b"HTTP/1.1 abc\r\n\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
)
async def test_an_unreadable_answer_is_a_retry_that_never_repeats_the_url(answer: bytes) -> None:
    # aiohttp's response errors print the whole URL, and a webhook's URL often carries
    # its secret (a token in the query, a key in the path).
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    raw = await asyncio.start_server(reply, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    allowed = HttpBuiltinConfig(allow_hosts=["127.0.0.1"], allow_addresses=["127.0.0.1"])
    try:
        with pytest.raises(Retry) as retry:
            await call(allowed, {"url": f"http://127.0.0.1:{port}/k3y-path?token=QSECRET-99"})
    finally:
        raw.close()
        await raw.wait_closed()
    assert "127.0.0.1" in retry.value.reason
    assert "QSECRET" not in retry.value.reason and "k3y-path" not in retry.value.reason


async def test_credentials_do_not_follow_a_redirect_to_another_host(server: Server) -> None:
    both = HttpBuiltinConfig(
        allow_hosts=["127.0.0.1", "localhost"], allow_addresses=["127.0.0.1", "::1"]
    )
    base = f"http://127.0.0.1:{server.port}"
    auth = {"Authorization": "Bearer s3cret"}
    same = await call(both, {"url": f"{base}/whoami", "headers": auth})
    assert same["body"] == "Bearer s3cret"
    moved = await call(both, {"url": f"{base}/to-localhost", "headers": auth})
    assert moved["url"].startswith("http://localhost:") and moved["body"] == "anonymous"


async def test_custom_secrets_do_not_follow_a_redirect_to_another_origin(server: Server) -> None:
    cfg = HttpBuiltinConfig(
        allow_hosts=["127.0.0.1", "localhost"],
        allow_addresses=["127.0.0.1", "::1"],
        headers={"X-Api-Key": "config-key", "User-Agent": "jobwire-test"},
    )
    base = f"http://127.0.0.1:{server.port}"
    payload = {"headers": {"X-Secret": "payload-secret"}}
    same = await call(cfg, {"url": f"{base}/keys", **payload})
    assert same["body"] == "config-key|payload-secret|jobwire-test"
    moved = await call(cfg, {"url": f"{base}/keys-to-localhost", **payload})
    assert moved["url"].startswith("http://localhost:")
    assert moved["body"] == "-|-|jobwire-test"  # only the safe headers went along


class _FakeResponse:
    """Just enough of aiohttp's response for ``HttpCall._follow``."""

    def __init__(self, status: int, location: str | None) -> None:
        self.status, self.charset = status, None
        self.headers = {"Location": location} if location else {}
        self.content = self

    async def iter_chunked(self, size: int) -> AsyncIterator[bytes]:
        yield b"done"

    async def __aenter__(self) -> _FakeResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class _FakeSession:
    """Answers each request with the next (status, Location); records what was sent."""

    def __init__(self, *answers: tuple[int, str | None]) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[str, dict[str, str]]] = []

    def request(self, method: str, url: Any, headers: dict[str, str], **_: Any) -> _FakeResponse:
        self.sent.append((str(url), dict(headers)))
        return _FakeResponse(*self.answers.pop(0))


async def follow(session: _FakeSession, url: str) -> dict[str, Any]:
    cfg = HttpBuiltinConfig(
        allow_hosts=["hooks.example.org"], headers={"Authorization": "Bearer t", "Accept": "*/*"}
    )
    request = _Request.parse({"url": url}, cfg)
    return await HttpCall(cfg)._follow(session, request)  # type: ignore[arg-type]


async def test_a_redirect_to_another_port_drops_credentials_and_https_to_http_is_refused() -> None:
    session = _FakeSession((302, "https://hooks.example.org:8443/b"), (200, None))
    result = await follow(session, "https://hooks.example.org/a")
    assert result["status"] == 200
    assert [headers for _, headers in session.sent] == [
        {"Authorization": "Bearer t", "Accept": "*/*"},
        {"Accept": "*/*"},  # same host, another port: another origin
    ]
    session = _FakeSession((301, "http://hooks.example.org/a"))
    with pytest.raises(Reject, match="from https to plain http"):
        await follow(session, "https://hooks.example.org/a")
    assert len(session.sent) == 1  # the plaintext URL was never called


async def test_bad_header_lines_fail_for_good_and_an_odd_charset_still_reads(
    server: Server,
) -> None:
    cfg = HttpBuiltinConfig(allow_hosts=["127.0.0.1"], allow_addresses=["127.0.0.1"])
    url = f"http://127.0.0.1:{server.port}"
    for headers in ({"X-A": "a\r\nX-Injected: 1"}, {"X-A": "a\nb"}, {"Bad Name": "x"}):
        with pytest.raises(Reject, match=r"CR, LF or NUL|not a token"):
            await call(cfg, {"url": f"{url}/ok", "headers": headers})
    assert server.seen == []
    odd = await call(cfg, {"url": f"{url}/odd-charset"})
    assert odd["status"] == 200 and odd["body"] == "héllo"
    with pytest.raises(ConfigError, match="CR, LF or NUL"):
        parse_config(
            'builtins: {http: {allow_hosts: [a.org], headers: {X-A: "a\\r\\nb"}}}', "j.yaml"
        )


def test_configured_headers_are_secret_and_never_printed() -> None:
    text = "builtins: {http: {allow_hosts: [a.org], headers: {X-Auth: 987654321}}}"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "jobwire.yaml")
    assert "builtins.http.headers" in str(caught.value)
    assert "987654321" not in str(caught.value)


@pytest.mark.parametrize(
    "address",
    [
        # NAT64, well-known and local-use
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b::a00:1",
        "64:ff9b:1::7f00:1",
        # 6to4
        "2002:7f00:1::1",
        "2002:a9fe:a9fe::",
        "2002:a00:1::",
        # IPv4-compatible
        "::127.0.0.1",
        "::169.254.169.254",
        "::10.0.0.1",
        # Teredo, the client obfuscated (127.0.0.1, 169.254.169.254, 10.0.0.1)
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
        "2001:0:4136:e378:8000:63bf:5601:5601",
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",
        # site-local
        "fec0::1",
    ],
)
def test_ipv6_forms_that_embed_an_ipv4_address_are_refused(address: str) -> None:
    policy = HostPolicy([], [])
    assert not policy.address_allowed(address)
    assert policy.refusal(URL(f"http://[{address}]/")) is not None
    # Listing the prefix alone is not enough when the IPv4 address inside is not public.
    listed = HostPolicy([], ["64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "::/96", "2001::/32"])
    assert not listed.address_allowed(address)


def test_an_embedding_prefix_is_allowed_only_when_listed_and_to_a_public_ipv4() -> None:
    public = "64:ff9b::5db8:d822"  # 93.184.216.34 through NAT64
    assert not HostPolicy([], []).address_allowed(public)
    assert HostPolicy([], ["64:ff9b::/96"]).address_allowed(public)
    assert HostPolicy([], ["64:ff9b::/96", "127.0.0.1"]).address_allowed("64:ff9b::7f00:1")
    assert HostPolicy([], []).address_allowed("2606:4700::1111")  # plain public IPv6


def test_host_patterns_and_addresses() -> None:
    policy = HostPolicy(["hooks.example.org", "*.example.com"], [])
    assert policy.host_allowed("hooks.example.org")
    assert policy.host_allowed("a.b.example.com")
    assert not policy.host_allowed("example.com")  # "*." covers names below, not the domain
    assert not policy.host_allowed("evil-example.com")
    assert not policy.host_allowed("hooks.example.org.evil.net")
    for address in (
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "169.254.169.254",
        "::1",
        "::ffff:127.0.0.1",
        "fe80::1",
        "100.64.0.1",
        "0.0.0.0",
    ):
        assert not policy.address_allowed(address), address
    assert policy.address_allowed("93.184.216.34")
    assert HostPolicy([], ["10.0.0.0/8"]).address_allowed("10.9.9.9")


def test_retry_after_forms() -> None:
    assert retry_after_seconds("120", 3600) == 120
    assert retry_after_seconds("99999", 3600) == 3600
    # No wait asked ("now", a date past): the retry policy's backoff, not an instant retry
    # that used every attempt up in a moment.
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", 3600) is None
    assert retry_after_seconds("0", 3600) is None
    assert retry_after_seconds("\u00b2", 3600) is None  # a digit to str.isdigit, not to float
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    assert 55 <= (retry_after_seconds(future, 3600) or 0) <= 61
    assert retry_after_seconds("soon", 3600) is None
    assert retry_after_seconds(None, 3600) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("handlers: {n: 'builtin:htp'}", "handlers: n: unknown built-in 'htp'"),
        ("handlers: {n: 'builtin:http'}", "handlers.n is builtin:http: it needs a builtins.http"),
        (
            "builtins: {http: {allow_hosts: ['bad host!']}}",
            "builtins.http.allow_hosts: 'bad host!' is not a host name",
        ),
        (
            "builtins: {http: {allow_hosts: [a.org], allow_addresses: [10.0.0.0/33]}}",
            "'10.0.0.0/33' is not an IP address or network",
        ),
    ],
)
def test_http_config_problems_stop_start_up(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "jobwire.yaml")
    assert problem in str(caught.value)
