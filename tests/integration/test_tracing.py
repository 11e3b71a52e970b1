"""A job's traceparent header becomes the parent of its handler's span."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from jobwire.config import Config
from jobwire.models import JobSpec
from jobwire.store.postgres import PostgresStore
from tests.support.inprocess import running_daemon
from tests.support.waiting import wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """An SDK in this process (a provider can be set once per process)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
    return memory


async def test_handler_span_continues_the_message_trace(
    database_url: str, pg_store: PostgresStore, exporter: InMemorySpanExporter
) -> None:
    config = Config.model_validate({"database": {"url": database_url}})
    async with running_daemon(config):
        traceparent = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
        (traced,) = await pg_store.enqueue_many(
            [JobSpec("echo", payload={"x": 1}, headers={"traceparent": traceparent})]
        )
        (plain,) = await pg_store.enqueue_many([JobSpec("fail", max_attempts=1)])

        def spans() -> dict[int, object]:
            found = {s.attributes["jobwire.job_id"]: s for s in exporter.get_finished_spans()}
            return found if {traced, plain} <= set(found) else {}

        found = await wait_for(spans, what="both jobs' spans")
    span = found[traced]
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_SPAN
    assert span.name == "jobwire.run echo" and span.status.is_ok
    failed = found[plain]
    assert failed.parent is None  # no traceparent: a trace of its own
    assert not failed.status.is_ok
