"""The frames jobwire's STOMP client writes (the batched ACKs, SEND, NACK, SUBSCRIBE): the same
bytes stomp.py's STOMP 1.2 protocol writes, frame by frame."""

from __future__ import annotations

from typing import Any

import pytest
from stomp.protocol import Protocol12
from stomp.utils import Frame, convert_frame, pack

from jobwire.adapters.stomp.aio import encode
from jobwire.adapters.stomp.bridge import ack_frames


class Recording:
    """A transport that keeps what stomp.py would write."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def set_listener(self, name: str, listener: Any) -> None:
        return None

    def transmit(self, frame: Frame) -> None:
        self.written.append(pack(convert_frame(frame)))


@pytest.mark.parametrize(
    "ack_ids",
    [
        ["T_jobwire@@session-Zx3@@1"],  # RabbitMQ's
        ["ID:host-40123-1733000000000-1:1:1:1:7", "ID:host:2"],  # ActiveMQ's: colons
        ["back\\slash", "new\nline", "carriage\rreturn", "ünïcode"],
        [],
    ],
)
def test_ack_frames_are_the_bytes_stomp_py_writes(ack_ids: list[str]) -> None:
    transport = Recording()
    protocol = Protocol12(transport)
    for ack_id in ack_ids:
        protocol.ack(ack_id)
    assert ack_frames(ack_ids) == b"".join(transport.written)


def test_frames_written_are_stomp_py_s_bytes() -> None:
    transport = Recording()
    protocol = Protocol12(transport)
    headers = {"x-odd": "a:b\nc\\d", "persistent": "true"}
    protocol.send("/queue/q", b'{"n": 1}', content_type="application/json", headers=dict(headers))
    protocol.nack("T_1@@session@@7")
    protocol.subscribe("/queue/q", "jobwire-s", ack="client-individual", headers={"p": "1"})
    ours = [
        encode(
            "SEND",
            {**headers, "destination": "/queue/q", "content-type": "application/json"},
            b'{"n": 1}',
        ),
        encode("NACK", {"id": "T_1@@session@@7"}),
        encode(
            "SUBSCRIBE",
            {"p": "1", "destination": "/queue/q", "id": "jobwire-s", "ack": "client-individual"},
        ),
    ]
    assert ours == transport.written
