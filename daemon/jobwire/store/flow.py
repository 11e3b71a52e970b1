"""How every store splits a claim between the fast claim and the flow claim."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from jobwire.models import Job
from jobwire.store.base import ClaimFlow, ClaimRequest


def plain_queues(request: ClaimRequest) -> dict[str, int]:
    """Slots per queue for the fast claim: every queue but those wholly on the flow path
    (a queue rate); a queue whose flow is ``only_special`` still gets its plain jobs here."""
    flow = request.flow
    if flow is None:
        return request.per_queue
    return {
        q: n
        for q, n in request.per_queue.items()
        if q not in flow.queues or flow.queues[q].only_special
    }


def flow_left(
    request: ClaimRequest, flow: ClaimFlow, claimed: Sequence[Job]
) -> tuple[dict[str, int], int]:
    """Slots per flow queue and in all that the fast claim left for the flow claim."""
    taken = Counter(j.queue for j in claimed)
    per_queue = {
        q: request.per_queue.get(q, 0) - taken[q]
        for q in flow.queues
        if request.per_queue.get(q, 0) - taken[q] > 0
    }
    return per_queue, request.limit - len(claimed)
