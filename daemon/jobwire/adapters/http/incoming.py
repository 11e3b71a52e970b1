"""What a webhook request becomes: a Message with the headers it may keep and its key."""

from __future__ import annotations

import hashlib

from aiohttp import web

from jobwire.adapters.base import Message
from jobwire.adapters.http.config import NEVER_KEPT, HttpSource
from jobwire.selectors import parse_selector

# Stored with the job: which request made it (a duplicate's answer is told apart by it).
REQUEST_HEADER = "jobwire-request-id"


class Incoming:
    """Turns one source's requests into messages (credentials never kept)."""

    def __init__(self, cfg: HttpSource) -> None:
        self.cfg = cfg
        signature = cfg.signature.header_name().lower() if cfg.signature else ""
        hidden = NEVER_KEPT | {signature}
        self._keep = {h.lower() for h in cfg.headers} - hidden
        # Headers a route selector reads are kept under the name it is written with, so
        # header:X-GitHub-Event finds the value whatever case the sender used.
        route = cfg.route
        texts = [route.handler_from, route.dedup_key]
        texts.append(route.priority if isinstance(route.priority, str) else None)
        selected = [parse_selector(t) for t in texts if t and t != "none"]
        self._selected = [
            s.name for s in selected if s.kind == "header" and s.name.lower() not in hidden
        ]

    def message(self, request: web.Request, body: bytes, request_id: str) -> Message:
        """The request as a message of the source, keyed (see ``default_key``)."""
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            lower = name.lower()
            if lower in self._keep:
                headers.setdefault(lower, value)
        for name in self._selected:
            selected = request.headers.get(name)
            if selected is not None:
                headers[name] = selected
        headers[REQUEST_HEADER] = request_id
        query = {name: request.query[name] for name in request.query}
        return Message(
            source=self.cfg.name,
            body=body,
            headers=headers,
            properties={
                "query": query,
                "method": request.method,
                "path": request.path,
                "remote": request.remote or "",
            },
            content_type=request.headers.get("Content-Type"),
            dedup_key=self.default_key(request, body, request_id),
        )

    def default_key(self, request: web.Request, body: bytes, request_id: str) -> str:
        """The key when the route names none: a token holder's Idempotency-Key, else the
        signed body's hash (a replay of it is the same job), else the request's own id."""
        if self.cfg.token is not None:
            given = request.headers.get("Idempotency-Key")
            if given:
                return given
        if self.cfg.signature is not None:
            return "sha256:" + hashlib.sha256(body).hexdigest()
        return request_id
