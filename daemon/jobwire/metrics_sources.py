"""The per-source metric families, read from each source's ``describe()`` at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

SOURCE_STATES = ("connecting", "up", "down", "paused", "stopped")
# "discarded": MQTT QoS 0 deliveries past their budget, before the intake (never received).
INTAKE_OUTCOMES = (
    "received",
    "stored",
    "duplicate",
    "invalid",
    "dead_lettered",
    "acked",
    "nacked",
    "discarded",
)


def source_metrics(sources: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    """Intake counts, states, Kafka lag, poison, replaced headers, frame readers and the
    deliveries waiting to be stored, by source."""
    intake = CounterMetricFamily(
        "jobwire_intake_messages",
        "Broker messages by source and what became of them.",
        labels=["source", "outcome"],
    )
    state = GaugeMetricFamily(
        "jobwire_source_state", "1 for the state each source is in.", labels=["source", "state"]
    )
    lag = GaugeMetricFamily(
        "jobwire_kafka_lag",
        "Messages between the stored offset and the partition's end.",
        labels=["source", "partition"],
    )
    poison = CounterMetricFamily(
        "jobwire_poison",
        "Messages that could not become runnable jobs (stored as failed, or dead-lettered),"
        " by source and reason.",
        labels=["source", "reason"],
    )
    replaced = CounterMetricFamily(
        "jobwire_headers_replaced",
        "Messages whose headers held values the store cannot (replaced by markers).",
        labels=["source"],
    )
    # AMQP: "jobwire" (the fast path) or "aiormq"; STOMP: "asyncio", "nul-safe" or
    # "stomp.py".
    reader = GaugeMetricFamily(
        "jobwire_source_frame_reader",
        "1 for the frame reader each source's connections use.",
        labels=["source", "reader"],
    )
    # Deliveries the intake holds, unacknowledged, while the pool is full: a steady count
    # with a wait near workers.hand_off_wait says the pool, not the broker, is the limit.
    waiting = GaugeMetricFamily(
        "jobwire_intake_waiting",
        "Deliveries received and not yet being stored, by source.",
        labels=["source"],
    )
    held_back = GaugeMetricFamily(
        "jobwire_intake_held_back_seconds",
        "How long the oldest waiting delivery has been held back for a free slot (0: none).",
        labels=["source"],
    )
    for name, info in sorted(sources.items()):
        if info.get("frame_reader"):
            reader.add_metric([name, str(info["frame_reader"])], 1)
        for reason, count in sorted((info.get("poison") or {}).items()):
            poison.add_metric([name, reason], count)
        replaced.add_metric([name], info.get("headers_replaced", 0))
        for outcome in INTAKE_OUTCOMES:
            intake.add_metric([name, outcome], info.get(outcome, 0))
        for each in SOURCE_STATES:
            state.add_metric([name, each], 1 if info.get("state") == each else 0)
        for partition, behind in sorted((info.get("lag") or {}).items()):
            lag.add_metric([name, partition], behind)
        waiting.add_metric([name], info.get("waiting", 0))
        held_back.add_metric([name], info.get("held_back_s", 0.0))
    yield from (intake, state, lag, poison, replaced, reader, waiting, held_back)
