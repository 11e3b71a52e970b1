"""The ``type: http`` source's settings (a webhook served on the daemon's HTTP server), and the
checks that need the whole config: the server is on, and no two paths clash."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from jobwire.config import Duration, SourceBase, _Strict, no_requeue
from jobwire.redaction import SECRET

if TYPE_CHECKING:
    from jobwire.config import Config, ConfigProblem

# The daemon's own paths: a webhook may not sit on or under them.
RESERVED_PATHS = ("/api", "/ui", "/metrics", "/healthz", "/readyz")
# Request headers kept with the job when ``headers`` is not given (provenance, not secrets).
DEFAULT_HEADERS = (
    "content-type",
    "user-agent",
    "x-request-id",
    "idempotency-key",
    "traceparent",
    "x-github-event",
    "x-github-delivery",
    "x-github-hook-id",
    "x-gitlab-event",
    "x-event-key",
)
# Never kept, whatever ``headers`` says: they carry the credentials.
NEVER_KEPT = frozenset({"authorization", "cookie", "proxy-authorization"})
_DEFAULT_SIGNATURE_HEADER = {
    "github": "X-Hub-Signature-256",
    "stripe": "Stripe-Signature",
    "hmac-sha256": "X-Signature",
}


class SignatureConfig(_Strict):
    """An HMAC-SHA256 signature of the raw body, checked in constant time."""

    scheme: Literal["github", "stripe", "hmac-sha256"] = Field(
        description="github: 'sha256=<hex>'; stripe: 't=<unix time>,v1=<hex>' over "
        "'<t>.<body>'; hmac-sha256: '<hex>' (a 'sha256=' prefix is accepted)."
    )
    secret: str = Field(
        min_length=8, json_schema_extra=SECRET, description="The shared HMAC key (secret)."
    )
    header: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9-]+$",
        description="The header holding the signature; null: X-Hub-Signature-256 (github), "
        "Stripe-Signature (stripe), X-Signature (hmac-sha256).",
    )
    tolerance: Duration = Field(
        300.0, description="stripe: how far the signed timestamp may be from now."
    )

    def header_name(self) -> str:
        """The header to read the signature from."""
        return self.header or _DEFAULT_SIGNATURE_HEADER[self.scheme]


class HttpSource(SourceBase):
    """An HTTP webhook: a POST to ``path`` on the daemon's HTTP server becomes a job."""

    type: Literal["http"] = Field(
        description="A webhook on the daemon's HTTP server (http.listen)."
    )
    path: str = Field(
        pattern=r"^/[A-Za-z0-9._~/-]*[A-Za-z0-9._~-]$",
        description="Where the webhook is served, e.g. /hooks/github (not under /api, /ui, "
        "/metrics, /healthz, /readyz).",
    )
    token: str | None = Field(
        None,
        min_length=16,
        json_schema_extra=SECRET,
        description="Bearer token a request must carry (Authorization: Bearer ...); null: "
        "none (then a signature is required).",
    )
    signature: SignatureConfig | None = Field(
        None, description="Check an HMAC signature of the body (GitHub, Stripe or plain)."
    )
    headers: list[str] = Field(
        default_factory=lambda: list(DEFAULT_HEADERS),
        description="Request headers kept with the job (by name, any case); those a route "
        "selector reads are kept too. Authorization and Cookie never are.",
    )
    answer_timeout: Duration = Field(
        30.0,
        description="How long a request waits for its job's commit before a 503 answer.",
    )
    retry_after: int = Field(
        5, ge=1, le=3600, description="Seconds in the Retry-After header of a 503 answer."
    )
    max_in_flight: int = Field(
        256,
        ge=1,
        description="Requests this source handles at once; more are answered 503 at once.",
    )
    read_timeout: Duration = Field(
        10.0,
        gt=0,
        description="How long reading a request's body may take before a 408 answer.",
    )

    @model_validator(mode="after")
    def _http_rules(self) -> HttpSource:
        no_requeue(self, "an HTTP request is answered, not redelivered")
        for reserved in RESERVED_PATHS:
            if self.path == reserved or self.path.startswith(reserved + "/"):
                raise ValueError(f"path {self.path!r} is the daemon's own ({reserved})")
        if self.token is None and self.signature is None:
            raise ValueError("give a token or a signature (or both): a webhook is never open")
        if self.route.dedup_key == "none":
            raise ValueError(
                "route.dedup_key none: an http source finds the job id it answers with by "
                "its dedup key"
            )
        for name in self.headers:
            if not re.fullmatch(r"[A-Za-z0-9-]+", name):
                raise ValueError(f"headers: {name!r} is not a header name")
        if self.token is None:
            _signed_selectors_only(self)
        return self


def _signed_selectors_only(source: HttpSource) -> None:
    """A source checked by signature alone trusts only the signed body: headers, the query
    and the request's properties are not signed, so whoever replays one delivery could
    change them at will."""
    route = source.route
    chosen = {
        "handler_from": route.handler_from,
        "dedup_key": route.dedup_key,
        "priority": route.priority if isinstance(route.priority, str) else None,
    }
    for key, text in chosen.items():
        if text is not None and text.partition(":")[0] in ("header", "query", "property"):
            raise ValueError(
                f"route.{key} {text!r}: headers, the query and the caller's address are not "
                "signed, so a source with only a signature (no token) may read it from the "
                "body (json:) only"
            )


def http_source_problems(config: Config, file: str) -> list[ConfigProblem]:
    """What no single source can see: http sources need the HTTP server, and distinct paths."""
    # Defined after jobwire.config imports the registry, which imports this module.
    from jobwire.config import ConfigProblem

    problems = []
    seen: dict[str, int] = {}
    for index, source in enumerate(config.sources):
        if not isinstance(source, HttpSource):
            continue
        if not config.http.enabled:
            problems.append(
                ConfigProblem(
                    file,
                    "http.enabled",
                    f"source {source.name!r} (type http) is served on the HTTP server: "
                    "enable it (http.enabled: true, http.listen)",
                )
            )
        key = source.path.rstrip("/").lower()
        if key in seen:
            problems.append(
                ConfigProblem(
                    file,
                    f"sources[{index}].path",
                    f"{source.path!r} is also sources[{seen[key]}].path",
                )
            )
        else:
            seen[key] = index
    return problems
