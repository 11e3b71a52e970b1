"""The job columns of an insert and the ids it answers, shared by the store's own insert and
the Client's insert on a caller's connection."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from jobwire.models import JobSpec


def job_columns(specs: Sequence[JobSpec], default_attempts: int | None) -> list[list[Any]]:
    """One array per job column, in insert_jobs' order ($1-$12); a spec without max_attempts
    gets ``default_attempts`` (None: the column's default, the published setting)."""
    return [
        [s.handler for s in specs],
        [s.queue for s in specs],
        [s.priority for s in specs],
        [s.max_attempts or default_attempts for s in specs],
        [max(s.delay, 0.0) for s in specs],
        [
            s.payload_json
            if s.payload_json is not None
            else (None if s.payload is None else json.dumps(s.payload))
            for s in specs
        ],
        [s.body for s in specs],
        [s.content_type for s in specs],
        [json.dumps(s.headers) if s.headers else None for s in specs],
        [s.source for s in specs],
        [s.dedup_key for s in specs],
        [s.parent_id for s in specs],
    ]


def option_columns(specs: Sequence[JobSpec]) -> list[list[Any] | None]:
    """The per-job options, one array each: timeout, concurrency key, unique mode, after ids
    (insert_jobs' $21-$24, insert_jobs_on_connection's $13-$16); None for an array of
    nothing but NULLs."""
    # Broker batches set none of them: a NULL array (which unnest pads with NULLs like any
    # shorter array) spares encoding and decoding a NULL per row on the hot path.
    return [
        [s.timeout for s in specs] if any(s.timeout is not None for s in specs) else None,
        [s.concurrency_key for s in specs]
        if any(s.concurrency_key is not None for s in specs)
        else None,
        [s.unique for s in specs] if any(s.unique is not None for s in specs) else None,
        # Dependencies as comma-separated ids: a text[] cannot hold arrays of unequal length.
        [",".join(map(str, s.after)) if s.after else None for s in specs]
        if any(s.after for s in specs)
        else None,
    ]


def shared_value(args: list[Any], index: int) -> Any:
    """The value every row of ``args[index]`` holds, with that array replaced by None (a
    NULL array); None, the array left as it is, when the rows differ."""
    column = args[index]
    if not column or column.count(column[0]) != len(column):
        return None
    args[index] = None
    return column[0]


def ids_in_order(specs: Sequence[JobSpec], rows: Sequence[Mapping[str, Any]]) -> list[int | None]:
    """An id per spec from the insert's (id, dedup_key) rows; None for a taken dedup key.

    Identity values ascend in input order (the insert orders by ordinality), so the n-th
    inserted spec owns the n-th smallest id; the first spec with a key owns its row, and a
    repeat in the same batch does not.
    """
    inserted_keys = {r["dedup_key"] for r in rows if r["dedup_key"] is not None}
    new_ids = iter(sorted(r["id"] for r in rows))
    ids: list[int | None] = []
    for spec in specs:
        if spec.dedup_key is None:
            ids.append(next(new_ids))
        elif spec.dedup_key in inserted_keys:
            inserted_keys.discard(spec.dedup_key)
            ids.append(next(new_ids))
        else:
            ids.append(None)
    return ids
