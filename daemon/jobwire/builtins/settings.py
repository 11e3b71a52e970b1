"""The ``builtins:`` section: settings of each built-in handler, and the ``builtin:`` names."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from pydantic import Field, field_validator, model_validator

from jobwire.config import Duration, _Strict
from jobwire.redaction import SECRET

BUILTIN_PREFIX = "builtin:"
KINDS = ("http", "email", "db_maintenance")
"""Every built-in kind a ``handlers:`` entry may name as ``builtin:KIND``."""

# A host pattern: an exact name or IP, or "*." and a domain (any name below it, not itself).
_HOST = re.compile(r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$")


# An HTTP header: a token name, and a value without CR, LF or NUL (header injection).
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
HEADER_VALUE = re.compile(r"^[^\r\n\x00]*$")


def header_problem(name: str, value: str) -> str | None:
    """Why ``name: value`` cannot be sent as a header, or None when it can."""
    if not HEADER_NAME.match(name):
        return f"header name {name!r} is not a token"
    if not HEADER_VALUE.match(value):
        return f"header {name}: the value holds CR, LF or NUL"
    return None


def builtin_kind(target: str) -> str | None:
    """``KIND`` of a ``builtin:KIND`` handler target; None for a dotted path."""
    if target.startswith(BUILTIN_PREFIX):
        return target[len(BUILTIN_PREFIX) :]
    return None


class HttpBuiltinConfig(_Strict):
    """The ``http`` built-in: webhook calls, only to the hosts listed here."""

    allow_hosts: list[str] = Field(
        min_length=1,
        description="Hosts a job may call: exact names ('hooks.example.org') or '*.example.org' "
        "(any name below it). Every other host, and a redirect to one, is refused.",
    )
    allow_addresses: list[str] = Field(
        default_factory=list,
        description="Loopback, private or link-local addresses (or networks, CIDR) a call may "
        "still reach; without them such addresses are refused whatever the host name.",
    )
    timeout: Duration = Field(
        30.0, description="Longest call (a payload's own timeout may only be shorter)."
    )
    max_response_bytes: int = Field(
        1_048_576, ge=1, description="Bytes of a response read at most; the rest is dropped."
    )
    result_body_chars: int = Field(
        4096, ge=0, description="Characters of the response body kept in the job's result."
    )
    max_redirects: int = Field(
        5, ge=0, le=20, description="Redirects followed at most (each checked like the URL)."
    )
    max_retry_after: Duration = Field(
        3600.0, description="A longer Retry-After from the server is cut to this."
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        json_schema_extra=SECRET,
        description="Headers sent with every call (a payload's headers win), e.g. X-Api-Key "
        "(secret: never printed; dropped on a redirect to another origin).",
    )

    @field_validator("allow_hosts")
    @classmethod
    def _host_patterns(cls, value: list[str]) -> list[str]:
        for host in value:
            if not _HOST.match(host):
                raise ValueError(f"{host!r} is not a host name, IP or '*.domain' pattern")
        return [h.lower().strip("[]") for h in value]

    @field_validator("allow_addresses")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return value

    @field_validator("headers")
    @classmethod
    def _header_lines(cls, value: dict[str, str]) -> dict[str, str]:
        for name, item in value.items():
            problem = header_problem(name, item)
            if problem is not None:
                raise ValueError(problem)
        return value


class EmailTemplate(_Strict):
    """One e-mail template: a subject and a text and/or HTML body (Jinja2)."""

    subject: str = Field(description="The subject line (a Jinja2 template).")
    text: str | None = Field(None, description="The plain-text part (a Jinja2 template).")
    html: str | None = Field(
        None, description="The HTML part (a Jinja2 template; variables are HTML-escaped)."
    )

    @model_validator(mode="after")
    def _a_body(self) -> EmailTemplate:
        if self.text is None and self.html is None:
            raise ValueError("give text, html or both")
        # A syntax error stops start-up, naming the part, rather than failing every job.
        env = SandboxedEnvironment()
        for part in ("subject", "text", "html"):
            source = getattr(self, part)
            if source is not None:
                try:
                    env.parse(source)
                except jinja2.TemplateSyntaxError as exc:
                    raise ValueError(f"{part}: template syntax error: {exc}") from None
        return self


class EmailBuiltinConfig(_Strict):
    """The ``email`` built-in: SMTP delivery of templated messages."""

    host: str = Field(description="The SMTP server.")
    port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Its port; null: 465 with tls, 587 with starttls, else 25.",
    )
    security: Literal["none", "starttls", "tls"] = Field(
        "starttls",
        description="none: plain SMTP; starttls: upgrade after connecting (required); "
        "tls: TLS from the start (SMTPS).",
    )
    username: str | None = Field(None, description="Login name; null: no authentication.")
    password: str | None = Field(
        None, json_schema_extra=SECRET, description="Login password (never logged)."
    )
    from_address: str = Field(
        alias="from", description="The sender, e.g. 'jobwire <noreply@example.org>'."
    )
    timeout: Duration = Field(30.0, description="Longest SMTP conversation.")
    templates: dict[str, EmailTemplate] = Field(
        default_factory=dict, description="Templates by name, written inline."
    )
    templates_dir: Path | None = Field(
        None,
        description="A directory of templates: NAME/subject.txt, NAME/body.txt, NAME/body.html "
        "(inline templates win).",
    )

    @field_validator("templates_dir")
    @classmethod
    def _a_directory(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{str(value)!r} is not a directory")
        return value

    def smtp_port(self) -> int:
        """The port to connect to."""
        if self.port is not None:
            return self.port
        return {"tls": 465, "starttls": 587}.get(self.security, 25)


class MaintenanceBuiltinConfig(_Strict):
    """The ``db_maintenance`` built-in: VACUUM and ANALYZE of jobwire's own tables."""

    statement_timeout: Duration = Field(
        3600.0, description="Longest VACUUM or ANALYZE of one table."
    )


class BuiltinsConfig(_Strict):
    """Settings of the built-in handlers; each is needed only if a handler names it."""

    http: HttpBuiltinConfig | None = Field(None, description="Settings of builtin:http.")
    email: EmailBuiltinConfig | None = Field(None, description="Settings of builtin:email.")
    db_maintenance: MaintenanceBuiltinConfig = Field(
        MaintenanceBuiltinConfig(), description="Settings of builtin:db_maintenance."
    )
