"""``jobwire queues``: pause and resume queues for every instance, and list their limits."""

from __future__ import annotations

import getpass
import socket
from typing import Any

import click

from jobwire.cli.common import (
    DB_SECTIONS,
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
from jobwire.config import Config
from jobwire.limits import check_queue_name, make_rate
from jobwire.queue_admin import set_paused
from jobwire.store.base import OperatorStore, QueueState

QUEUE_SECTIONS = (*DB_SECTIONS, "queues", "handler_limits", "workers")


@main.group()
def queues() -> None:
    """Queues: pause and resume them for every instance, see their limits."""


def cli_actor() -> str:
    """Who acts from this shell, for the audit table."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"cli:{user}@{socket.gethostname()}"


def _set_paused(name: str, paused: bool) -> None:
    problem = check_queue_name(name)
    if problem is not None:
        fail(problem)
    config, _ = load(DB_SECTIONS)
    actor = cli_actor()

    async def act(store: OperatorStore) -> bool:
        return await set_paused(store, name, paused, actor)

    changed = with_store(config, act)
    if as_json():
        print_json({"queue": name, "paused": paused, "changed": changed})
        return
    state = "paused" if paused else "resumed"
    click.echo(f"queue {name} {state}" if changed else f"queue {name} was already {state}")


@queues.command("pause")
@click.argument("name")
@global_options
def queues_pause(name: str) -> None:
    """Start no more jobs of queue NAME on any instance (running ones finish; new jobs are
    still stored)."""
    _set_paused(name, True)


@queues.command("resume")
@click.argument("name")
@global_options
def queues_resume(name: str) -> None:
    """Start jobs of queue NAME again."""
    _set_paused(name, False)


def queue_rows(config: Config, states: list[QueueState]) -> list[dict[str, Any]]:
    """Each queue of the config or of the pause table: state and limits."""
    by_name = {s.queue: s for s in states}
    rows = []
    for name in sorted({*config.queue_names(), *by_name}):
        qc = config.queue(name)
        state = by_name.get(name)
        rate = make_rate(qc.rate, qc.burst) if qc.rate is not None else None
        rows.append(
            {
                "queue": name,
                "paused": bool(state and state.paused),
                "changed_at": state.changed_at if state else None,
                "changed_by": state.changed_by if state else None,
                "concurrency": qc.concurrency,
                "rate": qc.rate,
                "burst": rate.burst if rate is not None else None,
                "key_concurrency": qc.key_concurrency,
                "ordered": qc.ordered,
                "configured": name in config.queues or name == "default",
            }
        )
    return rows


@queues.command("list")
@global_options
def queues_list() -> None:
    """Every queue this config names or an operator paused: state and limits."""
    config, _ = load(QUEUE_SECTIONS)
    rows = queue_rows(config, with_store(config, lambda s: s.queue_states()))
    if as_json():
        limits = {
            name: {"rate": lim.rate, "burst": make_rate(lim.rate, lim.burst).burst}
            for name, lim in config.handler_limits.items()
        }
        print_json({"queues": rows, "handler_limits": limits})
        return
    print_table(
        [
            Column("QUEUE"),
            Column("STATE"),
            Column("CONCURRENCY", justify="right"),
            Column("RATE"),
            Column("KEYS"),
            Column("CHANGED"),
        ],
        [
            (
                r["queue"],
                "paused" if r["paused"] else "running",
                r["concurrency"] or "-",
                f"{r['rate']} (burst {r['burst']})" if r["rate"] else "-",
                f"{r['key_concurrency']}{' ordered' if r['ordered'] else ''} per key",
                f"{fmt_time(r['changed_at'])} by {r['changed_by']}" if r["changed_at"] else "-",
            )
            for r in rows
        ],
    )
