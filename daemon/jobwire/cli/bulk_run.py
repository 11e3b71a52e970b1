"""Acting on a bulk action's frozen ids a batch at a time, so that Ctrl-C stops it with an
exact account: what was done is said, never left for the operator to guess."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from rich.progress import Progress

from jobwire.cli.common import console

BATCH = 500  # ids per selection page and per statement: short transactions, steady progress

Act = Callable[[Sequence[int]], Awaitable[dict[int, str]]]


@dataclass
class Acting:
    """How far acting on the frozen ids has got (read after an interruption, too)."""

    done: dict[int, str] = field(default_factory=dict)
    reached: int = 0  # ids of the batches whose statement answered
    in_flight: list[int] = field(default_factory=list)  # a batch sent, its answer not read
    interrupted: bool = False


async def act_in_batches(ids: list[int], act: Act, name: str, acting: Acting) -> None:
    """Act on ``ids`` a batch at a time, with a progress bar on a terminal. The first Ctrl-C
    (the task cancelled) lets the batch in flight answer, so the count said is exact, then
    stops; a second one (KeyboardInterrupt, from asyncio.Runner) leaves that batch in doubt."""
    bar: AbstractContextManager[Progress | None] = nullcontext()
    if sys.stderr.isatty():
        bar = Progress(console=console(err=True), transient=True)
    with bar as progress:
        task = None if progress is None else progress.add_task(name, total=len(ids))
        for at in range(0, len(ids), BATCH):
            batch = acting.in_flight = ids[at : at + BATCH]
            step = asyncio.ensure_future(act(acting.in_flight))
            try:
                answered = await asyncio.shield(step)
            except asyncio.CancelledError:
                # The statement may be committing already: cancelling it would leave its
                # batch in doubt. It is short (one batch); wait for its answer instead.
                acting.interrupted = True
                answered = await step
            acting.done.update(answered)
            acting.reached += len(batch)
            acting.in_flight = []
            if progress is not None and task is not None:
                progress.update(task, advance=len(batch))
            if acting.interrupted:
                return
