"""The tracer provider lookup: asked at most once a second while absent, kept once found."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from opentelemetry import trace

from jobwire import tracing


class _Real(trace.TracerProvider):
    def get_tracer(self, *args: object, **kwargs: object) -> trace.Tracer:
        return trace.NoOpTracer()


@dataclass
class Lookups:
    """The API's global provider lookup, answered by ``answer``; counted."""

    answer: trace.TracerProvider = field(default_factory=trace.ProxyTracerProvider)
    count: int = 0

    def __call__(self) -> trace.TracerProvider:
        self.count += 1
        return self.answer


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> Lookups:
    found = Lookups()
    monkeypatch.setattr(trace, "get_tracer_provider", found)
    return found


def test_placeholder_is_asked_again_only_after_a_second(
    lookups: Lookups, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr(tracing.time, "monotonic", lambda: clock[0])
    provider = tracing._Provider()
    assert not provider.real() and lookups.count == 1
    clock[0] += 0.5
    assert not provider.real() and lookups.count == 1
    lookups.answer = _Real()
    clock[0] += 0.6
    assert provider.real() and lookups.count == 2
    clock[0] += 10
    assert provider.real() and lookups.count == 2  # found: kept, never asked again


def test_forget_looks_at_once(lookups: Lookups) -> None:
    provider = tracing._Provider()
    assert not provider.real()
    lookups.answer = _Real()
    assert not provider.real()  # within the second
    provider.forget()
    assert provider.real()
