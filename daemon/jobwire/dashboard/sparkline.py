"""Throughput sparklines: a queue's finished jobs per minute over the last hour, as inline
SVG (no script, no style attribute: the Content-Security-Policy allows neither)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from markupsafe import Markup

from jobwire.store.base import ThroughputRow

MINUTES = 60
WIDTH, HEIGHT = 180, 28


@dataclass(frozen=True)
class QueueThroughput:
    """One queue's last hour: finished and failed jobs per minute, oldest first."""

    queue: str
    finished: list[int]
    failed: list[int]

    @property
    def total(self) -> int:
        """Jobs finished in the hour."""
        return sum(self.finished)

    @property
    def last_minute(self) -> int:
        """Jobs finished in the last whole minute rolled up."""
        return self.finished[-1]


def per_queue(rows: list[ThroughputRow], until: datetime) -> dict[str, QueueThroughput]:
    """The rollup's rows as a minute-by-minute series per queue, ending at ``until``."""
    first = until.replace(second=0, microsecond=0) - timedelta(minutes=MINUTES)
    series: dict[str, tuple[list[int], list[int]]] = {}
    for minute, queue, status, n in rows:
        at = int((minute - first).total_seconds() // 60)
        if not 0 <= at < MINUTES:
            continue
        finished, failed = series.setdefault(queue, ([0] * MINUTES, [0] * MINUTES))
        finished[at] += n
        if status == "failed":
            failed[at] += n
    return {q: QueueThroughput(q, f, x) for q, (f, x) in sorted(series.items())}


def _bars(values: list[int], top: int, css: str) -> str:
    step = WIDTH / MINUTES
    out = []
    for i, v in enumerate(values):
        if v:
            h = max(1.0, v / top * (HEIGHT - 2))
            out.append(
                f'<rect class="{css}" x="{i * step:.1f}" y="{HEIGHT - h:.1f}"'
                f' width="{step - 0.6:.1f}" height="{h:.1f}"/>'
            )
    return "".join(out)


def sparkline(t: QueueThroughput) -> Markup:
    """SVG bars of finished jobs a minute, the failed part of each in red."""
    top = max(1, *t.finished)
    title = f"{t.queue}: {t.total:,} finished in the last hour, peak {top:,}/min"
    svg = (
        f'<svg class="spark" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}"'
        f' role="img" aria-label="{Markup.escape(title)}"><title>{Markup.escape(title)}</title>'
        f"{_bars(t.finished, top, 'spark-done')}{_bars(t.failed, top, 'spark-failed')}</svg>"
    )
    return Markup(svg)  # built from numbers and escaped text only
