"""Cumulative settlement (STOMP's ``client`` ack mode): one ACK or NACK settles the delivery it
names and every earlier one not yet settled, so the frames must follow delivery order.

jobwire settles out of order now and then (a dead-lettered message waits for its copy's
RECEIPT while the batch around it is stored and acked; a notify-mode message goes back a
moment later). So each delivery's verdict is noted as it comes, and frames are sent only for
the settled run at the head of the line: a NACK for a run of NACKs, an ACK for a run of ACKs,
each naming the run's last delivery. A delivery still waiting holds back the verdicts after
it; none of them is sent early, so the broker never takes a verdict jobwire did not give.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

Action = Literal["ack", "nack"]


class DeliveryOrder:
    """One connection's unsettled deliveries, in the order the broker sent them."""

    def __init__(self) -> None:
        # ack id -> its verdict; None while it has none.
        self._line: OrderedDict[str, Action | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._line)

    def delivered(self, ack_id: str) -> None:
        """The broker sent this delivery (call in arrival order)."""
        self._line[ack_id] = None

    def settle(self, ack_ids: list[str], action: Action) -> list[tuple[Action, str]]:
        """Note a verdict for these deliveries; returns the frames to send now, in order:
        (action, the ack id it names). Unknown ids (settled already, or from another
        connection) are ignored."""
        line = self._line
        for ack_id in ack_ids:
            if ack_id in line and line[ack_id] is None:
                line[ack_id] = action
        frames: list[tuple[Action, str]] = []
        while line:
            head_id, verdict = next(iter(line.items()))
            if verdict is None:
                break
            line.popitem(last=False)
            if frames and frames[-1][0] == verdict:
                frames[-1] = (verdict, head_id)
            else:
                frames.append((verdict, head_id))
        return frames
