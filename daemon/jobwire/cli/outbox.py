"""``jobwire outbox``: what waits to be published, the messages set aside, and sending them
again or discarding them (audited, as the dashboard's and the API's are)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

import click

from jobwire.cli.common import (
    DB_SECTIONS,
    EXIT_NOTHING,
    Column,
    as_json,
    fail,
    fmt_time,
    global_options,
    load,
    print_json,
    print_table,
    with_store,
)
from jobwire.cli.group import main
from jobwire.cli.queues import cli_actor
from jobwire.outbox_admin import OutboxRefused, check, discard, resend
from jobwire.store.base import OperatorStore, OutboxBacklog, SetAsideMessage

PAGE = 50


@main.group()
def outbox() -> None:
    """Messages handlers published: what waits, what was set aside, and what to do with it."""


def backlog_json(backlog: dict[str, OutboxBacklog]) -> dict[str, dict[str, object]]:
    """Each output's unsent, oldest and set-aside counts, as ``stats`` and ``list`` print."""
    return {
        o: {"pending": b.pending, "oldest_seconds": b.oldest, "set_aside": b.set_aside}
        for o, b in sorted(backlog.items())
    }


def print_backlog(backlog: dict[str, OutboxBacklog]) -> None:
    """The same as a table."""
    print_table(
        [
            Column("OUTPUT"),
            Column("UNSENT", justify="right"),
            Column("OLDEST", justify="right"),
            Column("SET ASIDE", justify="right"),
        ],
        [(o, b.pending, f"{b.oldest:.0f}s", b.set_aside) for o, b in sorted(backlog.items())],
    )


@outbox.command("list")
@global_options
def outbox_list() -> None:
    """Per output: unsent messages, the age of the oldest, and how many are set aside."""
    config, _ = load(DB_SECTIONS)
    backlog = with_store(config, lambda s: s.outbox_pending())
    if as_json():
        print_json({"outputs": backlog_json(backlog)})
    elif backlog:
        print_backlog(backlog)
    else:
        click.echo("nothing waits in the outbox")


@outbox.command("set-aside")
@click.argument("output_name", metavar="OUTPUT", required=False)
@click.option("--limit", type=click.IntRange(1, 10_000), default=PAGE, show_default=True)
@click.option(
    "--before-id", type=click.IntRange(1, 2**63 - 1), help="The next page: ids below this."
)
@global_options
def outbox_set_aside(output_name: str | None, limit: int, before_id: int | None) -> None:
    """Messages set aside (of OUTPUT, or every output), newest first, with why."""
    # Not "output": the global -o/--output option has that name.
    output = output_name
    if output is not None:
        try:
            check(output, None)
        except OutboxRefused as exc:
            fail(str(exc))
    config, _ = load(DB_SECTIONS)

    async def act(store: OperatorStore) -> list[SetAsideMessage]:
        return await store.set_aside_messages(output, limit, before_id)

    rows = with_store(config, act)
    if as_json():
        print_json({"set_aside": [dataclasses.asdict(m) for m in rows]})
        return
    if not rows:
        click.echo("no message is set aside" + (f" for {output}" if output else ""))
        return
    print_table(
        [
            Column("ID", justify="right"),
            Column("OUTPUT"),
            Column("JOB", justify="right"),
            Column("KEY"),
            Column("TRIES", justify="right"),
            Column("SET ASIDE"),
            Column("LAST ERROR", overflow="fold"),
        ],
        [
            (
                m.id,
                m.output,
                f"{m.job_id}/{m.n}" if m.job_id is not None else "-",
                m.key or "-",
                m.attempts,
                fmt_time(m.failed_at),
                (m.last_error or "").splitlines()[0] if m.last_error else "",
            )
            for m in rows
        ],
    )
    if len(rows) == limit:
        click.echo(f"more: --before-id {rows[-1].id}")


def _act(verb: str, output: str, ids: Sequence[int], yes: bool) -> None:
    """Resend or discard; all of the output's set-aside messages (no --id) are confirmed."""
    chosen = list(ids) or None
    try:
        check(output, chosen)
    except OutboxRefused as exc:
        fail(str(exc))
    config, _ = load(DB_SECTIONS)
    if chosen is None and not yes:
        question = f"{verb} every message of {output} that is set aside?"
        if not sys.stdin.isatty():
            fail(f"refusing to {verb} all of {output}'s set-aside messages: pass --yes or --id")
        if not click.confirm(question, default=False, err=True):
            fail("nothing done", EXIT_NOTHING)
    actor = cli_actor()
    act = resend if verb == "resend" else discard

    async def go(store: OperatorStore) -> list[int]:
        return await act(store, output, chosen, actor)

    done = with_store(config, go)
    past = "resent" if verb == "resend" else "discarded"
    if as_json():
        print_json({"output": output, past: done})
    elif done:
        click.echo(f"{len(done)} message(s) of {output} {past}")
    else:
        click.echo(f"no set-aside message of {output} matched; nothing {past}")
    if not done:
        sys.exit(EXIT_NOTHING)


_IDS = click.option(
    "--id",
    "ids",
    type=click.IntRange(1, 2**63 - 1),
    multiple=True,
    help="A set-aside message's id (repeat); none: all.",
)
_YES = click.option("--yes", "-y", is_flag=True, help="Do not ask before acting on all.")


@outbox.command("resend")
@click.argument("output_name", metavar="OUTPUT")
@_IDS
@_YES
@global_options
def outbox_resend(output_name: str, ids: tuple[int, ...], yes: bool) -> None:
    """Send OUTPUT's set-aside messages again (attempts from zero), once the cause is fixed.

    Their key's later messages may have gone out meanwhile: a resent one arrives after them."""
    _act("resend", output_name, ids, yes)


@outbox.command("discard")
@click.argument("output_name", metavar="OUTPUT")
@_IDS
@_YES
@global_options
def outbox_discard(output_name: str, ids: tuple[int, ...], yes: bool) -> None:
    """Delete OUTPUT's set-aside messages: they are never sent (the audit keeps their ids)."""
    _act("discard", output_name, ids, yes)
