"""Which queues get series of their own in the per-queue gauges, and which are folded.

Any application can enqueue into any queue name (Client.enqueue, the SQL function, the
HTTP API), so the queues with live jobs are input, not configuration: 50,000 of them made
/metrics 10 MB and 200,000 lines, rendered in 3-5 s on the event loop, and read each
queue's oldest job every second. Every served queue keeps its series; up to
MAX_UNSERVED_QUEUES others get theirs; the rest are summed into one ``_other`` queue.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import structlog

log = structlog.get_logger("jobwire.metrics")

OTHER_QUEUES = "_other"
MAX_UNSERVED_QUEUES = 100


class QueueSeries:
    """The queues named in the per-queue gauges: the served ones, and a bounded few others."""

    def __init__(self, served: Iterable[str], cap: int = MAX_UNSERVED_QUEUES) -> None:
        self.served = frozenset(served)
        self.cap = cap
        self.others: set[str] = set()
        # Queues with live jobs and no series of their own, at the last read.
        self.folded: set[str] = set()
        # Once anything was folded, _other stays (0 when empty): a vanished series reads
        # as "no data", not as "none left".
        self.folding = False

    def update(self, live: Mapping[str, Mapping[str, int]]) -> None:
        """Admit the unserved queues with live jobs while there is room, fold the rest."""
        new = [q for q in live if q not in self.served and q not in self.others]
        if len(self.others) + len(new) > self.cap:
            # Queues emptied since they were admitted make room (their series go).
            self.others = {q for q in self.others if q in live}
        # The biggest first: those an operator most needs to see by name.
        new.sort(key=lambda q: (-sum(live[q].values()), q))
        room = max(0, self.cap - len(self.others))
        self.others.update(new[:room])
        folded = set(new[room:])
        if folded and not self.folded:
            log.warning(
                "metrics_queues_folded",
                folded=len(folded),
                cap=self.cap,
                label=OTHER_QUEUES,
            )
        self.folded = folded
        self.folding = self.folding or bool(folded)

    def named(self) -> list[str]:
        """The queues with series of their own, sorted."""
        return sorted(self.served | self.others)

    def labels(self) -> list[str]:
        """Every queue label to export, ``_other`` last once anything was folded."""
        named = self.named()
        return [*named, OTHER_QUEUES] if self.folding and OTHER_QUEUES not in named else named

    def fold(self, live: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
        """The live counts by label: folded queues summed into ``_other``."""
        out = {q: dict(counts) for q, counts in live.items() if q not in self.folded}
        if self.folding:
            other = out.setdefault(OTHER_QUEUES, {})
            for queue in self.folded:
                for status, n in live[queue].items():
                    other[status] = other.get(status, 0) + n
        return out
