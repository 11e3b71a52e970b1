"""Pacing beside other instances: which queues' intakes may still wait for this pool.

An intake that holds deliveries back for its pool's next free slot (intake/pacing.py) keeps
them from the database, where another instance could have claimed them. That costs nothing
when the other instances consume the same sources from a broker that hands each message to
whichever consumer has room (AMQP, STOMP): what one holds back, the broker gives the others.
It would starve an instance that only claims (workers only, or fed by other sources), and
one whose share a broker fixes whatever its pace (Kafka partitions, MQTT shared
subscriptions). So each instance writes in its row, at registration and with each
heartbeat, the queues it serves and the competing sources it consumes; a queue paces beside
others only when every other instance that serves it consumes every source this one feeds
it from, and all of those compete.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from jobwire.config import Config

SERVES = "serves"
COMPETING = "competing_sources"


def describe(config: Config, queues: Collection[str]) -> dict[str, list[str]]:
    """What this instance writes in its workers row for the others to read."""
    return {
        SERVES: sorted(queues),
        COMPETING: sorted(s.name for s in config.sources if s.competing),
    }


def paced_beside(
    config: Config, queues: Collection[str], others: Collection[Mapping[str, Any]]
) -> frozenset[str]:
    """The queues whose intakes may wait for this pool although ``others`` (the live other
    instances' rows' state) share the database."""
    feeds: dict[str, list[Any]] = {}
    for source in config.sources:
        if source.route.queue in queues:
            feeds.setdefault(source.route.queue, []).append(source)
    paced = set()
    for queue, sources in feeds.items():
        if all(s.competing for s in sources) and all(
            _fed_alike(other, queue, {s.name for s in sources}) for other in others
        ):
            paced.add(queue)
    return frozenset(paced)


def _fed_alike(other: Mapping[str, Any], queue: str, sources: set[str]) -> bool:
    """The other instance cannot run ``queue``'s jobs, or gets them as this one does."""
    serves, competing = other.get(SERVES), other.get(COMPETING)
    if not isinstance(serves, list) or not isinstance(competing, list):
        return False  # says nothing (an older version, or no heartbeat yet): may only claim
    # Only strings count: a row is another program's writing, and an entry of another type
    # must neither match nor break the lease keeper's upkeep.
    return queue not in serves or sources <= {c for c in competing if isinstance(c, str)}
