"""``jobs retry|cancel|delete``: freeze the matching ids, confirm, act in batches, sum up."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from jobwire.cli.bulk_run import BATCH, Acting, act_in_batches
from jobwire.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_NOTHING,
    as_json,
    fail,
    global_options,
    load_db,
    print_json,
    with_store,
)
from jobwire.cli.filters import filter_options, job_filter
from jobwire.store.base import AdminStore, JobFilter


@dataclass(frozen=True)
class BulkAction:
    """One bulk command: which statuses it acts on and what it does to a batch of ids."""

    name: str
    done: str  # "retried"
    statuses: tuple[str, ...]
    skipped_why: str
    help: str
    act: Callable[[AdminStore, Sequence[int], bool], Awaitable[dict[int, str]]]


async def _retry(store: AdminStore, ids: Sequence[int], poison: bool) -> dict[int, str]:
    return {i: "pending" for i in await store.retry_ids(ids, poison)}


async def _cancel(store: AdminStore, ids: Sequence[int], _poison: bool) -> dict[int, str]:
    return await store.cancel_ids(ids)


async def _delete(store: AdminStore, ids: Sequence[int], _poison: bool) -> dict[int, str]:
    return {i: "deleted" for i in await store.delete_ids(ids)}


BULK_ACTIONS = [
    BulkAction(
        "retry",
        "retried",
        ("failed", "cancelled"),
        "no longer failed or cancelled",
        "Run failed or cancelled jobs again, with a fresh allowance of attempts. Poison jobs "
        "(unroutable, or failed before they ever ran) only with --include-poison.",
        _retry,
    ),
    BulkAction(
        "cancel",
        "cancelled",
        ("pending", "retrying", "running"),
        "no longer waiting or running",
        "Cancel waiting jobs; running ones are stopped by their worker.",
        _cancel,
    ),
    BulkAction(
        "delete",
        "deleted",
        ("succeeded", "failed", "cancelled"),
        "no longer finished",
        "Delete finished jobs and their attempts (never a waiting or running one).",
        _delete,
    ),
]


@dataclass
class Outcome:
    """What a bulk action selected and did."""

    matched: list[int] = field(default_factory=list)
    poison: int = 0  # matching poison jobs left out (retry without --include-poison)
    done: dict[int, str] = field(default_factory=dict)


async def freeze(store: AdminStore, where: JobFilter, statuses: Sequence[str]) -> list[int]:
    """Every matching id, newest first, read a page at a time (keyset): the set acted on."""
    found: list[int] = []
    for status in [where.status] if where.status else statuses:
        page_where = dataclasses.replace(where, status=status)
        before: int | None = None
        while True:
            page = await store.select_ids(page_where, BATCH, before)
            found += page
            if len(page) < BATCH:
                break
            before = page[-1]
    return sorted(set(found), reverse=True)


def _confirm(action: BulkAction, count: int) -> None:
    """Ask on a terminal; refuse (exit 2) without one: a script says --yes."""
    question = f"{action.name} {count} job(s)?"
    if not sys.stdin.isatty():
        fail(f"refusing to {action.name} {count} job(s) without confirmation: pass --yes")
    if not click.confirm(question, default=False, err=True):
        fail("nothing done", EXIT_NOTHING)


def _interrupted(action: BulkAction, out: Outcome, acting: Acting) -> None:
    """Ctrl-C mid-way: say exactly what was done and what was not, exit 130."""
    left = len(out.matched) - acting.reached - len(acting.in_flight)
    if as_json():
        print_json(
            {
                "action": action.name,
                "interrupted": True,
                "matched": len(out.matched),
                action.done: sorted(acting.done, reverse=True),
                "not_reached": left,
                "in_doubt": acting.in_flight,
            }
        )
    else:
        line = (
            f"interrupted: {len(acting.done)} {action.done}, {left} of {len(out.matched)} "
            "not reached"
        )
        if acting.in_flight:
            line += (
                f", {len(acting.in_flight)} in doubt (their statement was sent, its answer "
                "never read)"
            )
        click.echo(line)
    sys.exit(EXIT_INTERRUPTED)


def _summary(action: BulkAction, out: Outcome, dry_run: bool) -> None:
    skipped = [i for i in out.matched if i not in out.done]
    if as_json():
        print_json(
            {
                "action": action.name,
                "dry_run": dry_run,
                "matched": len(out.matched),
                "ids": out.matched,
                action.done: sorted(out.done, reverse=True),
                "skipped": skipped,
                "poison_left_out": out.poison,
                **(
                    {"running_asked_to_stop": [i for i, s in out.done.items() if s == "running"]}
                    if action.name == "cancel"
                    else {}
                ),
            }
        )
    else:
        lines = []
        if dry_run:
            lines.append(f"{len(out.matched)} job(s) would be {action.done} (dry run)")
        else:
            stopping = sum(1 for s in out.done.values() if s == "running")
            if stopping:
                lines.append(
                    f"{len(out.done) - stopping} {action.done}, {stopping} running asked to "
                    f"stop, {len(skipped)} skipped ({action.skipped_why})"
                )
            else:
                lines.append(
                    f"{len(out.done)} {action.done}, {len(skipped)} skipped ({action.skipped_why})"
                )
        if out.poison:
            lines.append(
                f"{out.poison} poison job(s) left out (unroutable, or failed before they ever "
                "ran): --include-poison to retry them too"
            )
        for line in lines:
            click.echo(line)
    acted = out.matched if dry_run else out.done
    if not acted:
        sys.exit(EXIT_NOTHING)


def bulk_command(action: BulkAction) -> click.Command:
    """The click command for one bulk action."""

    @click.argument("job_ids", type=int, nargs=-1)
    @filter_options
    @click.option("--yes", "-y", is_flag=True, help="Do not ask (for scripts).")
    @click.option("--dry-run", is_flag=True, help="Count (and list, with -o json); act on none.")
    @global_options
    def command(job_ids: tuple[int, ...], yes: bool, dry_run: bool, **filters: Any) -> None:
        include_poison = bool(filters.pop("include_poison", False))
        status = filters["status"]
        if status is not None and status not in action.statuses:
            fail(f"{action.name} acts on {', '.join(action.statuses)} jobs, not {status}")
        named_only = all(v is None for v in filters.values())
        if not job_ids and named_only:
            fail(f"give job ids or a filter (--status, --queue, ...) to {action.name}")
        where = job_filter(job_ids, **filters)
        config = load_db()

        async def select(store: AdminStore) -> Outcome:
            out = Outcome()
            if action.name == "retry" and not include_poison:
                every = await freeze(store, where, action.statuses)
                clean = dataclasses.replace(where, exclude_poison=True)
                out.matched = await freeze(store, clean, action.statuses)
                out.poison = len(every) - len(out.matched)
            else:
                out.matched = await freeze(store, where, action.statuses)
            return out

        out = with_store(config, select)
        if not out.matched:
            if not as_json():
                click.echo(f"no matching job to {action.name}", err=True)
            _summary(action, out, dry_run)
        if dry_run:
            _summary(action, out, dry_run)
            return
        # Ids an operator named are what they asked for; a filter's set is confirmed first.
        if not named_only and not yes:
            _confirm(action, len(out.matched))
        acting = Acting()

        # A retry goes oldest first: a job waits only on older ones (after names jobs that
        # exist), so each batch's dependencies are already back and its waiters wait for
        # them; newest first, a waiter retried before its failed dependency failed again.
        ids = sorted(out.matched) if action.name == "retry" else out.matched

        def act(store: AdminStore) -> Awaitable[None]:
            return act_in_batches(
                ids, lambda batch: action.act(store, batch, include_poison), action.name, acting
            )

        try:
            with_store(config, act)
        except KeyboardInterrupt:  # a second Ctrl-C: the batch in flight is in doubt
            acting.interrupted = True
        if acting.interrupted:
            _interrupted(action, out, acting)
        out.done = acting.done
        _summary(action, out, dry_run)

    command.__doc__ = action.help
    if action.name == "retry":
        command = click.option(
            "--include-poison",
            is_flag=True,
            help="Also retry unroutable jobs and jobs that failed before they ever ran.",
        )(command)
    return click.command(action.name, help=action.help)(command)
