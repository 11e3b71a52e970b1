"""An in-memory adapter that records how each delivery was settled."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from jobwire.adapters.base import Adapter, Message, SourceState


class FakeAdapter(Adapter):
    """Produces messages on demand; remembers acks, nacks, rejects and pauses."""

    kind = "fake"
    default_dedup = "header:id"

    def __init__(self, name: str = "fake") -> None:
        super().__init__(name)
        self.settled: dict[int, str] = {}
        self.pauses = 0
        self.resumes = 0
        # Set to make every dead-lettering fail (the target did not confirm).
        self.reject_error: Exception | None = None
        self._n = 0

    def message(
        self,
        body: bytes,
        headers: dict[str, str] | None = None,
        content_type: str | None = "application/json",
        properties: dict[str, Any] | None = None,
    ) -> Message:
        self._n += 1
        n = self._n

        async def ack() -> None:
            self.settled[n] = "ack"

        async def nack(requeue: bool) -> None:
            self.settled[n] = "nack-requeue" if requeue else "nack"

        async def reject(reason: str | None = None) -> None:
            if self.reject_error is not None:
                raise self.reject_error
            self.settled[n] = "reject"

        return Message(
            source=self.name,
            body=body,
            headers=headers or {},
            properties=properties or {},
            content_type=content_type,
            ack=ack,
            nack=nack,
            reject=reject,
            raw=n,
        )

    async def _session(self) -> None:
        """Connected at once, until cancelled (run() supervises it like a real adapter's)."""
        self._new_generation()
        self.set_state(SourceState.PAUSED if self.paused else SourceState.UP)
        await asyncio.Event().wait()

    async def _on_pause(self) -> None:
        self.pauses += 1

    async def _on_resume(self) -> bool:
        self.resumes += 1
        self.set_state(SourceState.UP)
        return True

    async def ack_many(self, messages: Sequence[Message]) -> None:
        for m in messages:
            assert m.ack is not None
            await m.ack()
