"""An outbox row's stable message id, as text and as the bytes a Kafka header carries."""

from __future__ import annotations

import pytest

from jobwire.effects import OutboxRow
from jobwire.store.pg_outbox import _row


@pytest.mark.parametrize(
    ("job_id", "n", "row_id", "expected"),
    [
        (42, 3, 7, "jobwire-42-3"),
        (None, 1, 7, "jobwire-row-7"),
        (2**62, 0, 1, f"jobwire-{2**62}-0"),
    ],
)
def test_message_id_bytes_are_the_message_id_encoded(
    job_id: int | None, n: int, row_id: int, expected: str
) -> None:
    row = OutboxRow(row_id, job_id, n, None, {}, b"")
    assert row.message_id == expected
    assert row.message_id_bytes == expected.encode()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [(None, {}), ({}, {}), ({"a": 1}, {"a": "1"}), ('{"a": "b"}', {"a": "b"}), ("null", {})],
)
def test_a_claimed_row_is_read_by_position_in_the_claims_column_order(
    headers: object, expected: dict[str, str]
) -> None:
    """outbox_claim returns id, job_id, n, key, headers, body, attempts, then the claim's own
    columns; headers come as NULL, a decoded object, or JSON text without the jsonb codec."""
    record = (7, 42, 3, "k", headers, b"body", 2, None, None, None)
    assert _row(record) == OutboxRow(7, 42, 3, "k", expected, b"body", 2)  # type: ignore[arg-type]
