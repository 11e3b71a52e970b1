"""The STOMP output: the output suite on RabbitMQ's STOMP plugin (a fresh durable queue,
SENT to /amq/queue/<name>, consumed over AMQP: the id arrives as the message_id)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from jobwire.adapters.stomp.config import StompOutput
from jobwire.adapters.stomp.output import StompPublisher
from jobwire.effects import OutboxRow
from tests.integration.outputs.base import OutputSuite, Received
from tests.integration.outputs.test_amqp import amqp_consumer, fresh_queue
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


class TestStompOutput(OutputSuite):
    """STOMP SENDs with receipts; the queue is read back over AMQP."""

    @pytest.fixture
    def target(self) -> Iterator[str]:
        yield from fresh_queue()

    def output(self, target: Any) -> dict[str, Any]:
        return {"type": "stomp", "destination": f"/amq/queue/{target}"}

    def consume(self, target: Any) -> contextlib.AbstractAsyncContextManager[Received]:
        return amqp_consumer(target)


def publisher(destination: str, port: int = 61613) -> StompPublisher:
    cfg = StompOutput.model_validate({"type": "stomp", "destination": destination, "port": port})
    return StompPublisher("out", cfg)


@pytest.fixture
def queue() -> Iterator[str]:
    yield from fresh_queue()


async def test_headers_that_steer_the_frame_are_not_taken_from_a_row(queue: str) -> None:
    # A row's own "transaction" made RabbitMQ refuse its SEND with an ERROR that named no
    # receipt: innocent rows were blamed and set aside, and sent again up to 13 times.
    rows = [
        OutboxRow(1, 7, 1, None, {}, b"one"),
        OutboxRow(2, 7, 2, None, {"transaction": "nope", "receipt": "x", "kept": "y"}, b"two"),
        OutboxRow(3, 7, 3, None, {}, b"three"),
    ]
    async with amqp_consumer(queue) as got:
        out = publisher(f"/amq/queue/{queue}")
        await out.connect()
        try:
            result = await out.publish(rows, 10)
        finally:
            await out.close()
        await wait_for(lambda: len(got.messages) >= 3, what="the three rows")
    assert (result.confirmed, result.error) == (frozenset({1, 2, 3}), None)
    assert sorted(body for _, body in got.messages) == [b"one", b"three", b"two"]


async def test_after_an_error_frame_the_receipts_that_follow_still_confirm_their_rows() -> None:
    # RabbitMQ's way with a SEND it refuses: an ERROR with no receipt-id, and RECEIPTs for
    # the others after it, on a connection it keeps open.
    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\x00")  # CONNECT
            writer.write(b"CONNECTED\nversion:1.2\n\n\x00")
            receipts = []
            for _ in range(3):
                frame = (await reader.readuntil(b"\x00")).decode()
                receipts.append(frame.split("receipt:")[1].split("\n")[0])
            writer.write(b"ERROR\nmessage:Bad transaction\n\n\x00")
            for receipt in (receipts[0], receipts[2]):
                writer.write(b"RECEIPT\nreceipt-id:%s\n\n\x00" % receipt.encode())
            await writer.drain()
            await reader.read()  # the client closes

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    out = publisher("/queue/x", server.sockets[0].getsockname()[1])
    try:
        await out.connect()
        rows = [OutboxRow(i, 7, i, None, {}, b"x") for i in (1, 2, 3)]
        result = await out.publish(rows, 10)
    finally:
        await out.close()
        server.close()
        await server.wait_closed()
    assert result.confirmed == frozenset({1, 3})
    assert result.error == "STOMP ERROR: Bad transaction"
