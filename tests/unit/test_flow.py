"""Flow control on the memory store: hysteresis, and hold reasons that do not trample."""

from __future__ import annotations

from jobwire.flow import BacklogGate
from jobwire.models import JobSpec, JobStatus
from tests.unit.test_intake import make


async def test_backlog_holds_above_high_and_releases_at_low() -> None:
    intake, adapter, store, _ = make()
    gate = BacklogGate(store, [intake], high=10, low=5)
    await store.enqueue_many([JobSpec("noop") for _ in range(11)])
    await gate.check()
    assert gate.holding and adapter.pauses == 1
    for job in list(store.jobs.values())[:3]:
        job.status = JobStatus.SUCCEEDED  # 8 ready: between the marks, still held
    await gate.check()
    assert gate.holding and adapter.resumes == 0
    for job in list(store.jobs.values())[:6]:
        job.status = JobStatus.SUCCEEDED  # 5 ready: released
    await gate.check()
    assert not gate.holding and adapter.resumes == 1


async def test_store_and_backlog_holds_overlap_without_an_early_resume() -> None:
    intake, adapter, _, _ = make()
    await intake.hold("backlog")
    await intake.hold("store")
    await intake.release("store")
    assert (adapter.pauses, adapter.resumes) == (1, 0)  # the backlog still holds it
    await intake.release("backlog")
    assert adapter.resumes == 1
