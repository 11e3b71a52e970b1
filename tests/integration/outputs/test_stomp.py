"""The STOMP output: the output suite on RabbitMQ's STOMP plugin (a fresh durable queue,
SENT to /amq/queue/<name>, consumed over AMQP: the id arrives as the message_id)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.outputs.base import OutputSuite, Received
from tests.integration.outputs.test_amqp import amqp_consumer, fresh_queue

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
