"""Drill: the daemon SIGKILLed between the store commit and the broker ack (a failpoint),
for every broker, then restarted: the redelivered messages make no second job.

(AMQP's and Kafka's own versions are in tests/integration/brokers/; this one runs the
same drill through the shared harness for all four.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.faults.harness import Broker, tally
from tests.support.daemon import Daemon as DaemonProcess
from tests.support.daemon import one_source_config
from tests.support.mqtt import create_session
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)
N = 500


def test_sigkill_between_commit_and_ack_then_restart_makes_no_duplicate(
    database_url: str, broker: Broker, tmp_path: Path
) -> None:
    source = {
        "name": "drill",
        "route": {"handler": "noop"},
        "batch_size": 50,
        **broker.source(broker.port),
    }
    config = one_source_config(tmp_path, database_url, source)
    if broker.kind == "mqtt":
        # The session (and its subscription) must exist before the messages are published.
        create_session(config, tmp_path / "session.log")
    published = asyncio.run(broker.publish(0, N))
    killed = DaemonProcess(
        config, tmp_path / "killed.log", env={"JOBWIRE_FAILPOINT": "intake.after_commit"}
    )
    assert killed.wait(60) == -9  # killed itself right after its first commit
    stored_before_ack = asyncio.run(tally(database_url, broker.kind, published, 0)).jobs
    assert 0 < stored_before_ack < N

    second = DaemonProcess(config, tmp_path / "second.log")
    try:
        second.wait_ready()

        async def all_stored() -> bool:
            return (await tally(database_url, broker.kind, published, 0)).jobs >= published

        asyncio.run(wait_for(all_stored, timeout=60, what=f"{published} jobs"))
        assert second.terminate() == 0
    finally:
        second.stop_quietly()
    result = asyncio.run(tally(database_url, broker.kind, published, 0))
    print(result.line("sigkill-after-commit"), f"stored_before_kill={stored_before_ack}")
    assert published == N
    assert (result.jobs, result.duplicates) == (N, 0)
