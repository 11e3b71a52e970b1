"""How the dashboard shows values: capped counts, ages, durations, payloads, provenance."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from jobwire.models import Job
from jobwire.scheduler import schedule_name

COUNT_CAP = 10_000  # counts stop here and read "10,000+": no page counts the history
SHOWN_CHARS = 65_536  # a payload or body longer than this is cut on the page
HEX_BYTES = 1024  # a binary body shows this much as hex

# Headers the adapters add that say where a message came from (broker coordinates).
PROVENANCE_PREFIXES = ("kafka-", "mqtt-", "amqp-", "stomp-", "x-jobwire-")
PROVENANCE_NAMES = frozenset(
    {"message-id", "destination", "subscription", "routing_key", "routing-key", "exchange"}
)


def capped(count: int | None, cap: int = COUNT_CAP) -> str:
    """``1,234``; ``10,000+`` at the cap; empty when not counted."""
    if count is None:
        return ""
    return f"{cap:,}+" if count >= cap else f"{count:,}"


def age(at: datetime | None, now: datetime | None = None) -> str:
    """How long ago, shortly: ``4s``, ``12m``, ``3h``, ``2d`` (``in 5m`` for the future)."""
    if at is None:
        return ""
    if (endless := _infinite(at)) is not None:
        return endless
    seconds = ((now or datetime.now(UTC)) - at).total_seconds()
    text = seconds_text(abs(seconds))
    return f"in {text}" if seconds < 0 else f"{text} ago"


def seconds_text(seconds: float | None) -> str:
    """A duration, shortly: ``850ms``, ``4.2s``, ``12m``, ``3h``, ``2d``."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def when(at: datetime | None) -> str:
    """A timestamp in UTC to the second."""
    if at is None:
        return ""
    if (endless := _infinite(at)) is not None:
        return endless
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _infinite(at: datetime) -> str | None:
    """PostgreSQL's name for a timestamp at infinity, or None for any other."""
    # asyncpg reads 'infinity' and '-infinity' (enqueue() takes run_at 'infinity') as the
    # naive datetime.max and min: neither can be subtracted from now or converted to UTC.
    if at.tzinfo is None and at == datetime.max:
        return "infinity"
    if at.tzinfo is None and at == datetime.min:
        return "-infinity"
    return None


def pretty(value: Any) -> str:
    """JSON, indented, cut at SHOWN_CHARS."""
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return _cut(text)


def _cut(text: str) -> str:
    if len(text) <= SHOWN_CHARS:
        return text
    return text[:SHOWN_CHARS] + f"\n... ({len(text) - SHOWN_CHARS:,} more characters)"


def body_preview(body: bytes | None) -> tuple[str, str]:
    """(kind, text) of a raw body: ``json`` pretty, ``text`` as is, else a ``hex`` dump."""
    if body is None:
        return "none", ""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "hex", hex_dump(body[:HEX_BYTES]) + _more(len(body))
    try:
        return "json", pretty(json.loads(text))
    except ValueError:
        pass
    if all(ch.isprintable() or ch in "\n\r\t" for ch in text[:SHOWN_CHARS]):
        return "text", _cut(text)
    return "hex", hex_dump(body[:HEX_BYTES]) + _more(len(body))


def _more(size: int) -> str:
    return f"\n... ({size - HEX_BYTES:,} more bytes)" if size > HEX_BYTES else ""


def hex_dump(data: bytes) -> str:
    """Sixteen bytes a line: offset, hex, and the printable ASCII."""
    lines = []
    for at in range(0, len(data), 16):
        chunk = data[at : at + 16]
        shown = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{at:08x}  {chunk.hex(' '):<47}  {shown}")
    return "\n".join(lines)


def provenance(job: Job) -> list[tuple[str, str]]:
    """Where the job came from: its source, then the broker coordinates in its headers."""
    out = [("source", job.source or "(enqueued directly)")]
    for name in sorted(job.headers):
        lower = name.lower()
        if lower.startswith(PROVENANCE_PREFIXES) or lower in PROVENANCE_NAMES:
            out.append((name, str(job.headers[name])))
    if job.dedup_key:
        out.append(("dedup key", job.dedup_key))
    if job.schedule_id is not None:
        out.append(("schedule", f"{schedule_name(job)} (id {job.schedule_id})"))
    return out


def segment(name: str) -> str:
    """``name`` as one URL path segment, ``/`` escaped too (Jinja's urlencode keeps it)."""
    # A queue or output name may hold "/" (an MQTT topic): kept, it splits the segment and
    # the route answers 404.
    return quote(name, safe="")


def first_line(text: str | None) -> str:
    """An error's first line (its message; the traceback follows on the job's page)."""
    return (text or "").strip().split("\n", 1)[0]


FILTERS = {
    "capped": capped,
    "age": age,
    "seconds": seconds_text,
    "when": when,
    "pretty": pretty,
    "first_line": first_line,
    "segment": segment,
}
"""The Jinja filters the templates use."""
