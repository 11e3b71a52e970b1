"""An outbox row's stable message id, as text and as the bytes a Kafka header carries."""

from __future__ import annotations

import pytest

from jobwire.effects import OutboxRow


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
