"""The ``http`` built-in: a webhook call described by the job's payload.

2xx succeeds; 429 and 5xx ask for a retry (after the server's Retry-After, if any); other
answers fail the job for good. Only hosts on the config's allow-list are called, and never a
loopback, private or link-local address unless the config allows that address: checked for
the URL, for every redirect (followed here, one hop at a time) and for every address a name
resolves to (at connect time, so a name that re-resolves elsewhere is caught too).
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from jobwire.builtins.hosts import AddressRefused, HostPolicy, retry_after_seconds
from jobwire.builtins.settings import HttpBuiltinConfig, header_problem
from jobwire.durations import parse_duration
from jobwire.exceptions import Reject, Retry
from jobwire.handlers import JobContext

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Connections open to one host at once; calls past it wait for one (within their timeout).
PER_HOST = 100
# What still goes along to another origin: nothing that could be a credential (an
# X-Api-Key from the config or the payload included).
_SAFE = frozenset(
    {"accept", "accept-encoding", "accept-language", "content-language", "content-type"}
    | {"user-agent"}
)


class GuardedResolver(AbstractResolver):
    """The default resolver, keeping only the addresses the policy allows."""

    def __init__(self, policy: HostPolicy) -> None:
        self._policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host``; raise AddressRefused when none of its addresses is allowed."""
        found = await self._inner.resolve(host, port, family)
        allowed = [r for r in found if self._policy.address_allowed(r["host"])]
        if not allowed:
            shown = ", ".join(sorted({r["host"] for r in found}))
            raise AddressRefused(
                f"{host} resolves to {shown}: loopback, private or link-local addresses are "
                "refused (builtins.http.allow_addresses)"
            )
        return allowed

    async def close(self) -> None:
        """Close the inner resolver."""
        await self._inner.close()


class HttpCall:
    """The handler: one aiohttp session for the daemon, opened by ``start``."""

    def __init__(self, cfg: HttpBuiltinConfig) -> None:
        self.cfg = cfg
        self.policy = HostPolicy(cfg.allow_hosts, cfg.allow_addresses)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the session."""
        # No cap on the whole session (the pool's concurrency bounds the calls), one per
        # host: with aiohttp's cap of 100 in all, 100 calls to a host that never answers
        # held every connection, and calls to every other host waited out their timeouts.
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.policy), limit=0, limit_per_host=PER_HOST
        )
        # No proxy from the environment (it would reach hosts the checks never see) and no
        # cookie jar shared between jobs.
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            # Each call's own deadline governs (asyncio.timeout), not aiohttp's 5 minutes.
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __call__(self, payload: Any, ctx: JobContext) -> dict[str, Any]:
        """Make the call the payload describes."""
        if self._session is None:
            raise Retry("the http built-in is not started yet")
        request = _Request.parse(payload, self.cfg)
        try:
            async with asyncio.timeout(request.timeout):
                return await self._follow(self._session, request)
        except TimeoutError:
            raise Retry(f"no answer from {request.url.host} within {request.timeout}s") from None
        except aiohttp.InvalidURL as exc:
            # The URL itself is not repeated: its path or query may hold a secret (a
            # webhook's token), and errors go to logs, the job's row and the dashboard.
            why = getattr(exc, "description", None) or "cannot be parsed"
            raise Reject(f"the url for {request.url.host} is not valid: {why}") from None
        except aiohttp.ClientError as exc:
            if isinstance(exc.__cause__, AddressRefused):
                raise Reject(str(exc.__cause__)) from None
            raise Retry(f"calling {request.url.host} failed: {_client_error(exc)}") from None

    async def _follow(self, session: aiohttp.ClientSession, req: _Request) -> dict[str, Any]:
        url, method, headers, send_body = req.url, req.method, req.headers, True
        for _ in range(self.cfg.max_redirects + 1):
            refused = self.policy.refusal(url)
            if refused is not None:
                raise Reject(refused)
            async with session.request(
                method,
                url,
                headers=headers,
                data=req.data if send_body else None,
                allow_redirects=False,
            ) as resp:
                location = resp.headers.get("Location")
                if resp.status in _REDIRECTS and location:
                    target = _redirect_target(url, location)
                    if url.scheme == "https" and target.scheme == "http":
                        raise Reject(
                            f"redirect from https to plain http (to {target.host}) refused"
                        )
                    if _origin(target) != _origin(url):
                        # Headers meant for one origin never follow a redirect to another.
                        headers = {k: v for k, v in headers.items() if k.lower() in _SAFE}
                    url = target
                    # As browsers do: 303 (and 301/302 after a POST) go on as a bodiless GET.
                    if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                        method, send_body = "GET", False
                    continue
                body, truncated = await _read_capped(resp, self.cfg.max_response_bytes)
                return self._outcome(resp, url, body, truncated)
        raise Reject(f"more than {self.cfg.max_redirects} redirects (builtins.http.max_redirects)")

    def _outcome(
        self, resp: aiohttp.ClientResponse, url: URL, body: bytes, truncated: bool
    ) -> dict[str, Any]:
        try:
            text = body.decode(resp.charset or "utf-8", errors="replace")
        except LookupError:
            # The call happened: an unknown charset only changes how the body reads (a
            # retry would make the call again for nothing).
            text = body.decode("utf-8", errors="replace")
        status = resp.status
        if 200 <= status < 300:
            keep = self.cfg.result_body_chars
            return {
                "status": status,
                "url": str(url),
                "body": text[:keep],
                "truncated": truncated or len(text) > keep,
            }
        what = f"HTTP {status} from {url.host}: {text[:200]}".rstrip(": ")
        if status == 429 or status >= 500:
            after = retry_after_seconds(resp.headers.get("Retry-After"), self.cfg.max_retry_after)
            raise Retry(what, after=after)
        raise Reject(what)


def _client_error(exc: aiohttp.ClientError) -> str:
    """An aiohttp error as ``Type: message``, without the URL a response error prints."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{type(exc).__name__}: {exc.status}, {exc.message}"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class _Request:
    """A payload checked: method, URL, headers, body and timeout."""

    method: str
    url: URL
    headers: dict[str, str]
    data: bytes | None
    timeout: float

    @classmethod
    def parse(cls, payload: Any, cfg: HttpBuiltinConfig) -> _Request:
        """Check the payload; anything wrong in it fails the job with the reason."""
        if not isinstance(payload, dict):
            raise Reject('the http built-in needs a JSON object payload: {"url": ...}')
        url = _url(payload.get("url"))
        headers = {**cfg.headers, **_headers(payload.get("headers"))}
        for name, value in headers.items():
            problem = header_problem(name, value)
            if problem is not None:
                raise Reject(problem)
        if "json" in payload and "body" in payload:
            raise Reject("give json or body, not both")
        data: bytes | None = None
        if "json" in payload:
            data = json.dumps(payload["json"]).encode()
            headers.setdefault("Content-Type", "application/json")
        elif payload.get("body") is not None:
            if not isinstance(payload["body"], str):
                raise Reject("body must be a string (send structured data as json)")
            data = payload["body"].encode()
        method = str(payload.get("method") or ("POST" if data is not None else "GET")).upper()
        if method not in _METHODS:
            raise Reject(f"method {method!r} is not one of {', '.join(sorted(_METHODS))}")
        return cls(method, url, headers, data, _timeout(payload.get("timeout"), cfg.timeout))


def _url(value: Any) -> URL:
    if not isinstance(value, str) or not value:
        raise Reject("url is missing (a string such as https://hooks.example.org/x)")
    try:
        url = URL(value)
    except ValueError as exc:
        raise Reject(f"url {value!r} is not valid: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise Reject(f"url {value!r} must be http:// or https:// with a host")
    return url


def _headers(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise Reject("headers must be an object of strings")
    return value


def _timeout(value: Any, most: float) -> float:
    if value is None:
        return most
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise Reject(f"timeout: {exc}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise Reject("timeout must be positive")
    return min(seconds, most)


def _origin(url: URL) -> tuple[str, str, int | None]:
    return url.scheme, (url.host or "").lower(), url.port


def _redirect_target(url: URL, location: str) -> URL:
    try:
        return url.join(URL(location))
    except ValueError as exc:
        raise Reject(f"redirect to an invalid URL {location!r}: {exc}") from None


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
    """At most ``cap`` bytes of the body, and whether there was more (left unread)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            return b"".join(chunks)[:cap], True
    return b"".join(chunks), False
