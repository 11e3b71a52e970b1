"""The ``email`` built-in through the real worker pool, against a local aiosmtpd server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from jobwire.builtins.email import EmailSend
from jobwire.builtins.settings import EmailBuiltinConfig, EmailTemplate
from jobwire.builtins.templating import Templates
from jobwire.config import Config, ConfigError, parse_config
from jobwire.exceptions import Reject, Retry
from jobwire.handlers import JobContext
from jobwire.models import Job, JobSpec, JobStatus
from jobwire.store.postgres import PostgresStore
from tests.support.inprocess import running_daemon
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

FINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}


class Mailbox:
    """Keeps what arrives; refuses some recipients, once (451) or for good (550)."""

    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, EmailMessage]] = []
        self._refused_once: set[str] = set()

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such mailbox"
        if address.startswith("busy@") and address not in self._refused_once:
            self._refused_once.add(address)
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        self.messages.append((envelope, email.message_from_bytes(raw, policy=default_policy)))
        return "250 Message accepted"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


def daemon_config(database_url: str, port: int, templates_dir: Path) -> Config:
    return Config.model_validate(
        {
            "database": {"url": database_url},
            "workers": {"concurrency": 4, "poll_interval": "100ms", "shutdown_timeout": "2s"},
            "retry": {"max_attempts": 3, "base": "10ms", "max": "50ms", "jitter": False},
            "handlers": {"mail": "builtin:email"},
            "builtins": {
                "email": {
                    "host": "127.0.0.1",
                    "port": port,
                    "security": "none",
                    "from": "jobwire <noreply@example.org>",
                    "templates": {
                        "welcome": {
                            "subject": "Welcome, {{ name }}",
                            "text": "Hello {{ name }}, your code is {{ code }}.",
                            "html": "<p>Hello {{ name }}</p>",
                        }
                    },
                    "templates_dir": str(templates_dir),
                }
            },
        }
    )


async def run(store: PostgresStore, payloads: list[dict[str, Any]]) -> list[Job]:
    ids = await store.enqueue_many(
        [JobSpec(handler="mail", payload=p, max_attempts=3) for p in payloads]
    )

    async def finished() -> list[Job]:
        jobs = [await store.get(i) for i in ids if i is not None]
        done = [j for j in jobs if j is not None and j.status in FINAL]
        return done if len(done) == len(payloads) else []

    return await wait_for(finished, timeout=30, what="mail jobs finished")


class SlowMailbox(Mailbox):
    """Answers each recipient after a pause: every command within aiosmtplib's own
    per-command timeout, the whole conversation not within the configured one."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        await asyncio.sleep(0.4)
        return await super().handle_RCPT(server, session, envelope, address, options)


async def test_the_timeout_bounds_the_whole_conversation_not_each_command() -> None:
    box = SlowMailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        cfg = EmailBuiltinConfig.model_validate(
            {
                "host": "127.0.0.1",
                "port": port,
                "security": "none",
                "from": "noreply@example.org",
                "timeout": "1s",
                "templates": {"hi": {"subject": "hi", "text": "hi"}},
            }
        )
        to = [f"r{i}@example.org" for i in range(5)]
        with pytest.raises(Retry) as retry:
            ctx = JobContext(job_id=1, attempt=1, max_attempts=3, queue="q", handler="mail")
            await EmailSend(cfg)({"to": to, "template": "hi", "vars": {}}, ctx)
    finally:
        controller.stop()
    assert "took longer than 1s" in retry.value.reason
    assert box.messages == []


async def test_a_server_that_echoes_the_credentials_never_gets_them_into_the_error() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hi\r\n")
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while line := await reader.readline():
                if line.upper().startswith((b"EHLO", b"HELO")):
                    writer.write(b"250-hi\r\n250 AUTH PLAIN\r\n")
                elif line.upper().startswith(b"AUTH"):
                    said = line.split()[-1]
                    quoted = said + b" = " + base64.b64decode(said).replace(b"\0", b"|")
                    writer.write(b"535 5.7.8 refused: " + quoted + b"\r\n")
                else:
                    writer.write(b"221 bye\r\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    cfg = EmailBuiltinConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": server.sockets[0].getsockname()[1],
            "security": "none",
            "from": "noreply@example.org",
            "username": "mailer",
            "password": "SMTP-pa55word-4242",
            "templates": {"hi": {"subject": "hi", "text": "hi"}},
        }
    )
    ctx = JobContext(job_id=1, attempt=1, max_attempts=3, queue="q", handler="mail")
    try:
        with pytest.raises(Reject) as refused:
            await EmailSend(cfg)({"to": "a@example.org", "template": "hi", "vars": {}}, ctx)
    finally:
        server.close()
        await server.wait_closed()
    reason = refused.value.reason
    assert "535" in reason and "***" in reason
    plain = base64.b64encode(b"\0mailer\0SMTP-pa55word-4242").decode()
    assert "pa55word" not in reason and plain not in reason


async def test_rendered_message_arrives(
    database_url: str, pg_store: PostgresStore, smtp: tuple[Mailbox, int], tmp_path: Path
) -> None:
    box, port = smtp
    (tmp_path / "receipt").mkdir()
    (tmp_path / "receipt" / "subject.txt").write_text("Receipt {{ number }}\n")
    (tmp_path / "receipt" / "body.txt").write_text("Total: {{ total }}")
    payloads: list[dict[str, Any]] = [
        {
            "to": "ada@example.org",
            "template": "welcome",
            "vars": {"name": "<b>Ada</b>", "code": 42},
        },
        {"to": ["bob@example.org"], "template": "receipt", "number": 7, "total": "9.50"},
        {"to": "ada@example.org", "template": "welcome", "vars": {"name": "Ada"}},  # no code
        {"to": "nobody@example.org", "template": "receipt", "number": 1, "total": "1"},
        {"to": "busy@example.org", "template": "receipt", "number": 2, "total": "2"},
        {"to": "ada@example.org", "template": "nope"},
        {"to": "not an address", "template": "receipt", "number": 3, "total": "3"},
        {
            "to": ["carol@example.org", "nobody@example.org"],
            "template": "receipt",
            "number": 4,
            "total": "4",
        },
    ]
    async with running_daemon(daemon_config(database_url, port, tmp_path)):
        jobs = await run(pg_store, payloads)
    by_id = {j.id: j for j in jobs}
    welcome, receipt, missing, nobody, busy, unknown, bad, partly = (
        by_id[i] for i in sorted(by_id)
    )

    assert welcome.status == JobStatus.SUCCEEDED, welcome.last_error
    assert welcome.result["message_id"] == f"<jobwire-{welcome.id}@example.org>"
    arrived = {m["Message-ID"]: (env, m) for env, m in box.messages}
    env, message = arrived[welcome.result["message_id"]]
    assert env.rcpt_tos == ["ada@example.org"]
    assert message["Subject"] == "Welcome, <b>Ada</b>"  # plain text: not escaped
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content().strip() == "Hello <b>Ada</b>, your code is 42."
    assert html.get_content().strip() == "<p>Hello &lt;b&gt;Ada&lt;/b&gt;</p>"  # escaped

    assert receipt.status == JobStatus.SUCCEEDED, receipt.last_error
    _, message = arrived[receipt.result["message_id"]]
    assert message["Subject"] == "Receipt 7"
    assert message.get_body(("html",)) is None
    assert message.get_content().strip() == "Total: 9.50"

    # A variable the payload lacks fails the job for good, naming it; nothing is sent.
    assert missing.status == JobStatus.FAILED and missing.attempts == 1
    assert "email template 'welcome' text: 'code' is undefined" in (missing.last_error or "")

    assert nobody.status == JobStatus.FAILED and nobody.attempts == 1  # 550: permanent
    assert "550" in (nobody.last_error or "")
    assert busy.status == JobStatus.SUCCEEDED and busy.attempts == 2  # 451, then accepted

    assert unknown.status == JobStatus.FAILED and "no email template 'nope'" in (
        unknown.last_error or ""
    )
    assert bad.status == JobStatus.FAILED and "is not an e-mail address" in (bad.last_error or "")
    # One recipient refused, the other taken: sent (a retry would resend), the refusal noted.
    assert partly.status == JobStatus.SUCCEEDED and partly.attempts == 1
    assert partly.result["refused"] == {"nobody@example.org": "550 5.1.1 no such mailbox"}
    assert arrived[partly.result["message_id"]][0].rcpt_tos == ["carol@example.org"]
    # Exactly the four that succeeded arrived, once each.
    assert len(box.messages) == 4


def test_templates_are_sandboxed() -> None:
    templates = Templates(
        {"evil": EmailTemplate(subject="{{ x.__class__.__mro__ }}", text="t")}, None
    )
    with pytest.raises(Reject, match="evil"):
        templates.render("evil", {"x": 1})
    with pytest.raises(Reject, match="not valid"):
        templates.render("../etc/passwd", {})


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (
            "templates: {w: {subject: 'Hi {{ name', text: x}}",
            "builtins.email.templates.w: subject: template syntax error",
        ),
        ("templates: {w: {subject: Hi}}", "builtins.email.templates.w: give text, html or both"),
        ("templates_dir: /nonexistent/jobwire", "builtins.email.templates_dir: '/nonexistent"),
        ("password: sup3r-s3cret-pass, port: 99999", "builtins.email.port"),
    ],
)
def test_email_config_problems_stop_start_up(extra: str, problem: str) -> None:
    text = (
        f"handlers: {{m: 'builtin:email'}}\nbuiltins:\n  email: {{host: h, from: a@b.c, {extra}}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "jobwire.yaml")
    assert problem in str(caught.value)
    assert "sup3r-s3cret-pass" not in str(caught.value)
