"""The ``email`` built-in: a templated message through SMTP (aiosmtplib).

Payload: ``{"to": "a@example.org" | [...], "template": "welcome", "vars": {...}}`` (without
``vars`` the whole payload is the template's variables); optional ``cc``, ``bcc``,
``reply_to``. Temporary SMTP trouble (4xx, no connection, a timeout) retries; a permanent
refusal (5xx) fails the job. The Message-ID is the job's, the same on every attempt, so a
receiver can drop the copy a retry after an unconfirmed delivery may send.
"""

from __future__ import annotations

import asyncio
import base64
import re
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr
from typing import Any

import aiosmtplib

from jobwire.builtins.settings import EmailBuiltinConfig
from jobwire.builtins.templating import Templates
from jobwire.exceptions import Reject, Retry
from jobwire.handlers import JobContext

_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")


class EmailSend:
    """The handler: renders a configured template and sends it."""

    def __init__(self, cfg: EmailBuiltinConfig) -> None:
        self.cfg = cfg
        self.templates = Templates(cfg.templates, cfg.templates_dir)
        # A server may quote what it was sent, credentials included (an AUTH line echoed
        # in its refusal): the job's error is shown to every dashboard reader.
        self._secrets = _secret_forms(cfg.username, cfg.password)

    def _scrub(self, text: str) -> str:
        """``text`` with the password, in every form it was sent in, masked."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def __call__(self, payload: Any, ctx: JobContext) -> dict[str, Any]:
        """Render and send the message the payload describes."""
        if not isinstance(payload, dict):
            raise Reject('the email built-in needs a JSON object payload: {"to": ..., ...}')
        template = payload.get("template")
        if not isinstance(template, str):
            raise Reject("template is missing (the name of a configured template)")
        variables = payload.get("vars", payload)
        if not isinstance(variables, dict):
            raise Reject("vars must be an object")
        rendered = self.templates.render(template, variables)
        message = EmailMessage()
        message["From"] = self.cfg.from_address
        to = _addresses(payload, "to", required=True)
        message["To"] = ", ".join(to)
        cc = _addresses(payload, "cc")
        if cc:
            message["Cc"] = ", ".join(cc)
        reply_to = _addresses(payload, "reply_to")
        if reply_to:
            message["Reply-To"] = ", ".join(reply_to)
        message["Subject"] = rendered.subject
        message["Message-ID"] = f"<jobwire-{ctx.job_id}@{_domain(self.cfg.from_address)}>"
        if rendered.text is not None:
            message.set_content(rendered.text)
            if rendered.html is not None:
                message.add_alternative(rendered.html, subtype="html")
        else:
            message.set_content(rendered.html or "", subtype="html")
        recipients = [*to, *cc, *_addresses(payload, "bcc")]
        refused, response = await self._send(message, recipients)
        return {
            "message_id": message["Message-ID"],
            "recipients": recipients,
            "refused": refused,
            "smtp": response,
        }

    async def _send(
        self, message: EmailMessage, recipients: list[str]
    ) -> tuple[dict[str, str], str]:
        """Send; the recipients the server refused while taking the others, and its answer."""
        cfg = self.cfg
        try:
            # aiosmtplib's timeout is per command: a server slow at each answer kept a job
            # for that many times as long (one command per recipient). This one is the
            # whole conversation's, as documented.
            async with asyncio.timeout(cfg.timeout):
                errors, response = await aiosmtplib.send(
                    message,
                    recipients=[parseaddr(r)[1] for r in recipients],
                    hostname=cfg.host,
                    port=cfg.smtp_port(),
                    username=cfg.username,
                    password=cfg.password,
                    use_tls=cfg.security == "tls",
                    start_tls=cfg.security == "starttls",
                    timeout=cfg.timeout,
                )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            why = self._scrub(
                "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            )
            if all(code >= 500 for code in codes):
                raise Reject(f"SMTP refused every recipient: {why}") from None
            raise Retry(f"SMTP refused recipients for now: {why}") from None
        except aiosmtplib.SMTPResponseException as exc:
            what = self._scrub(f"SMTP {exc.code} {exc.message}")
            if exc.code >= 500:
                raise Reject(what) from None
            raise Retry(what) from None
        except aiosmtplib.SMTPNotSupported as exc:
            raise Reject(self._scrub(f"SMTP server {cfg.host}: {exc}")) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            detail = self._scrub(str(exc)) or f"the conversation took longer than {cfg.timeout:g}s"
            where = f"{cfg.host}:{cfg.smtp_port()}"
            raise Retry(f"SMTP {where}: {type(exc).__name__}: {detail}") from None
        # Some refused, the rest taken: the message went; a retry would resend it to all.
        return {rcpt: f"{r.code} {r.message}" for rcpt, r in errors.items()}, response


def _secret_forms(username: str | None, password: str | None) -> list[str]:
    """The password as it travels in AUTH PLAIN and LOGIN (base64) and as it is."""
    if not password:
        return []
    plain = f"\0{username or ''}\0{password}".encode()
    forms = [
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(plain).decode(),
    ]
    return sorted({f for f in forms if len(f) >= 4}, key=len, reverse=True)


def _addresses(payload: dict[str, Any], key: str, *, required: bool = False) -> list[str]:
    """The addresses under ``key`` (a string or a list of them), each checked."""
    value = payload.get(key)
    if value is None or value == []:
        if required:
            raise Reject(f"{key} is missing (an address or a list of them)")
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise Reject(f"{key} must be an address or a list of addresses")
    for item in items:
        parsed = getaddresses([item])
        if "\n" in item or "\r" in item or len(parsed) != 1 or not _ADDRESS.match(parsed[0][1]):
            raise Reject(f"{key}: {item!r} is not an e-mail address")
    return list(items)


def _domain(address: str) -> str:
    domain = parseaddr(address)[1].rpartition("@")[2]
    return domain or "jobwire.invalid"
