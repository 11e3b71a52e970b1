"""The bench's figures: one scenario's measurement, medians over rounds, the printed table
with its ratios, the JSON and the chart under bench/results/."""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.common import REPO
from bench.pgstats import WritesPerJob

RESULTS = REPO / "bench" / "results"


@dataclass
class Measured:
    """One scenario's figure in one round (a sweep: its best, with every setting tried)."""

    rate: float
    writes: WritesPerJob | None = None
    settings: str = ""  # a sweep's best setting
    variants: dict[str, float] = field(default_factory=dict)  # a sweep: setting -> rate
    default: str = ""  # a sweep: which setting is the peer's default
    # A jobwire drain: jobs/s from the moment every daemon had started a job (scale-out).
    steady: float = 0.0
    path: str = ""  # a broker drain: how its jobs reached the pool (the last round's)


def median(runs: list[Measured]) -> Measured:
    """The median of every figure over the rounds; a sweep's best is the best median."""
    first = runs[0]
    variants = {k: statistics.median(r.variants[k] for r in runs) for k in first.variants}
    writes = [r.writes for r in runs if r.writes is not None]
    if variants:
        best = max(variants, key=lambda k: variants[k])
        return Measured(variants[best], _median_writes(writes), best, variants, first.default)
    return Measured(
        statistics.median(r.rate for r in runs),
        _median_writes(writes),
        steady=statistics.median(r.steady for r in runs),
        path=runs[-1].path,
    )


def _median_writes(writes: list[WritesPerJob]) -> WritesPerJob | None:
    if not writes:
        return None
    values: dict[str, Any] = {}
    for f in fields(WritesPerJob):
        present = [getattr(w, f.name) for w in writes if getattr(w, f.name) is not None]
        if present and isinstance(present[0], str):
            values[f.name] = statistics.median_low(present)  # a label: never averaged
        else:
            values[f.name] = statistics.median(present) if present else None
    return WritesPerJob(**values)


# The ratios printed under the table: (label, numerator, denominator); a name ending in
# " (default)" means that sweep's figure at the peer's default setting.
TABLE = "jobwire: drain a filled table"
TABLE_DEFAULTS = "jobwire: drain a filled table, defaults (concurrency 256)"
AMQP = "jobwire: AMQP drain"
AMQP_DEFAULTS = "jobwire: AMQP drain, defaults (prefetch 500, concurrency 256)"
TABLE_TWO = "jobwire: drain a filled table, 2 daemons"
AMQP_TWO = "jobwire: AMQP drain, 2 daemons"
PGQUEUER = "PgQueuer: drain a filled table, batch 10/100/500"
# A backlog five times --jobs: a queue's rate over a bigger table, where a drain of --jobs
# takes about a second (PgQueuer's rate falls as its table grows, jobwire's does not).
BACKLOG = 5
TABLE_BACKLOG = f"jobwire: drain a backlog of {BACKLOG}x the jobs, defaults"
PGQUEUER_BACKLOG = f"PgQueuer: drain a backlog of {BACKLOG}x the jobs, batch 100/500"
PROCRASTINATE = "Procrastinate: drain a filled table, concurrency 1/10/50"
CELERY = "Celery: AMQP drain, acks_late, prefork -c 2/4 x prefetch multiplier 4/32"
RATIOS = [
    ("jobwire AMQP drain / aio-pika ceiling", AMQP, "ceiling: aio-pika consume, batched acks"),
    (
        "jobwire AMQP drain at defaults / aio-pika ceiling",
        AMQP_DEFAULTS,
        "ceiling: aio-pika consume, batched acks",
    ),
    (
        "jobwire STOMP drain / stomp.py ceiling",
        "jobwire: STOMP drain",
        "ceiling: stomp.py consume, client-individual acks",
    ),
    (
        "jobwire MQTT drain / aiomqtt ceiling",
        "jobwire: MQTT drain",
        "ceiling: aiomqtt QoS 1, manual acks",
    ),
    (
        "jobwire Kafka drain / store path ceiling",
        "jobwire: Kafka drain (tansu)",
        "ceiling: jobwire store path, no broker",
    ),
    ("jobwire filled table at defaults / at concurrency 512", TABLE_DEFAULTS, TABLE),
    (
        f"jobwire backlog of {BACKLOG}x at defaults / PgQueuer's best there",
        TABLE_BACKLOG,
        PGQUEUER_BACKLOG,
    ),
    ("jobwire AMQP drain at defaults / at prefetch 1000, concurrency 512", AMQP_DEFAULTS, AMQP),
    ("2 daemons / 1, filled table (first start -> last finish)", TABLE_TWO, TABLE),
    ("2 daemons / 1, AMQP (first row -> last finish)", AMQP_TWO, AMQP),
]
# Taken from when every daemon had started a job: the scale-out itself.
SCALE_OUT = [("scale-out, filled table", TABLE_TWO, TABLE), ("scale-out, AMQP", AMQP_TWO, AMQP)]
# Best against best, defaults against defaults: (peer, jobwire's two scenarios).
PEER_RATIOS = [
    ("PgQueuer", PGQUEUER, (TABLE, TABLE_DEFAULTS)),
    ("Procrastinate", PROCRASTINATE, (TABLE, TABLE_DEFAULTS)),
    ("Celery", CELERY, (AMQP, AMQP_DEFAULTS)),
]


def report(
    medians: dict[str, Measured],
    runs: dict[str, list[Measured]],
    extra: dict[str, Any],
    jobs: int,
) -> None:
    """Print the table and its ratios; write JSON (and a chart) under bench/results/."""
    print()
    print(f"{'scenario':72} {'jobs/s':>10}  note")
    for name, m in medians.items():
        note = f"best: {m.settings}" if m.settings else ""
        print(f"{name:72} {m.rate:>10,.0f}  {note}")
    print()
    for label, top, bottom in RATIOS:
        if top in medians and bottom in medians:
            print(
                f"{label}: {_ratio(medians[top].rate, medians[bottom].rate)}"
                f"{_rounds(runs, top, bottom)}"
            )
    for label, two, one in SCALE_OUT:
        if two in medians and one in medians and medians[one].steady:
            print(
                f"{label}: 2 daemons {medians[two].steady:,.0f}/s / 1 daemon "
                f"{medians[one].steady:,.0f}/s = {_ratio(medians[two].steady, medians[one].steady)}"
                f" (from when every daemon had started a job){_rounds(runs, two, one, True)}"
            )
    for peer, name, (best_of_ours, our_default) in PEER_RATIOS:
        _peer_ratios(medians, runs, peer, name, best_of_ours, our_default)
    sweeps = {name: m for name, m in medians.items() if m.variants}
    if sweeps:
        print()
        for name, m in sweeps.items():
            every = ", ".join(f"{k}: {v:,.0f}/s" for k, v in m.variants.items())
            print(f"{name.split(':')[0]} sweep (default {m.default}): {every}")
    written = {name: m.writes for name, m in medians.items() if m.writes is not None}
    if written:
        print()
        print("writes per job (counters before and after; transactions and rows from")
        print("pg_stat_database of the drain's own database, less the bench's own polls):")
        for name, w in written.items():
            print(f"  {name}: {w.line()}")
    paths = {name: m.path for name, m in medians.items() if m.path}
    if paths:
        print()
        print("how the jobs reached the pool (last round):")
        for name, path in paths.items():
            print(f"  {name}: {path}")
    for name, value in extra.items():
        print(f"{name}: {value}")
    _save(medians, runs, extra, jobs)


def _ratio(top: float, bottom: float) -> str:
    return f"{top / bottom:.0%}" if top < bottom else f"{top / bottom:.2f}x"


def _rounds(runs: dict[str, list[Measured]], top: str, bottom: str, steady: bool = False) -> str:
    """The ratio within each round and their median: a machine whose speed drifts moves
    both figures of one round together, while the medians of the two may come from
    different rounds."""
    tops, bottoms = runs.get(top, []), runs.get(bottom, [])
    if len(tops) < 2 or len(tops) != len(bottoms):
        return ""
    pairs = [
        (t.steady, b.steady) if steady else (t.rate, b.rate)
        for t, b in zip(tops, bottoms, strict=True)
    ]
    ratios = [t / b for t, b in pairs if b]
    if len(ratios) != len(pairs):
        return ""
    each = ", ".join(_ratio(r, 1.0) for r in ratios)
    return f"; by round {each}, median {_ratio(statistics.median(ratios), 1.0)}"


def _peer_ratios(
    medians: dict[str, Measured],
    runs: dict[str, list[Measured]],
    peer: str,
    name: str,
    ours_best: str,
    ours_default: str,
) -> None:
    theirs = medians.get(name)
    if theirs is None:
        return
    ours = [n for n in (ours_best, ours_default) if n in medians]
    if ours:
        best = max(ours, key=lambda n: medians[n].rate)
        print(
            f"jobwire best ({best}) / {peer} best ({theirs.settings}): "
            f"{_ratio(medians[best].rate, theirs.rate)}{_rounds(runs, best, name)}"
        )
    default = theirs.variants.get(theirs.default)
    if ours_default in medians and default:
        print(
            f"jobwire defaults / {peer} defaults ({theirs.default}): "
            f"{_ratio(medians[ours_default].rate, default)}"
        )


def _save(
    medians: dict[str, Measured], runs: dict[str, list[Measured]], extra: dict[str, Any], jobs: int
) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    data = {
        "jobs": jobs,
        "runs": max((len(r) for r in runs.values()), default=0),
        "cpus": os.cpu_count(),
        "medians": {name: m.rate for name, m in medians.items()},
        "best_settings": {name: m.settings for name, m in medians.items() if m.settings},
        "sweeps": {name: m.variants for name, m in medians.items() if m.variants},
        "writes_per_job": {
            name: m.writes.as_dict() for name, m in medians.items() if m.writes is not None
        },
        "all_runs": {name: [m.rate for m in ms] for name, ms in runs.items()},
        "extra": extra,
    }
    (RESULTS / f"{stamp}.json").write_text(json.dumps(data, indent=2))
    if _chart({name: m.rate for name, m in medians.items()}, RESULTS / f"{stamp}.png"):
        print(f"written: {RESULTS / stamp}.json, .png")
    else:
        print(f"written: {RESULTS / stamp}.json (no chart: pip install -e '.[bench]')")


def _chart(medians: dict[str, float], path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:  # the chart is a nicety; the figures are printed and saved already
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(medians)
    fig, ax = plt.subplots(figsize=(12, 0.5 * len(names) + 1.5))
    colors = ["tab:blue" if n.startswith("jobwire") else "tab:gray" for n in names]
    ax.barh(names, [medians[n] for n in names], color=colors)
    ax.invert_yaxis()
    ax.set_xlabel("jobs (or messages) per second, median")
    ax.set_title("jobwire side by side (same machine, same PostgreSQL and brokers)")
    for i, n in enumerate(names):
        ax.text(medians[n], i, f" {medians[n]:,.0f}", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True
