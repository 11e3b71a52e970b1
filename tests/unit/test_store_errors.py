"""How the PostgreSQL store words the failures asyncpg raises (no database needed)."""

from __future__ import annotations

import asyncpg
import pytest

from jobwire.store.base import InvalidJobData, StoreUnavailable
from jobwire.store.pg_base import guard


async def test_a_session_ended_under_a_statement_is_said_as_such() -> None:
    # After pg_terminate_backend or a failover's demotion, asyncpg may report its own state
    # machine ("cannot switch to state 12"), which read in the logs like a jobwire bug.
    with pytest.raises(StoreUnavailable) as caught:
        async with guard("claim"):
            raise asyncpg.InternalClientError(
                "cannot switch to state 12; another operation (2) is in progress"
            )
    assert str(caught.value) == (
        "claim: the database session ended mid-statement "
        "(asyncpg: cannot switch to state 12; another operation (2) is in progress)"
    )


async def test_a_value_asyncpg_cannot_encode_is_the_data_not_the_store() -> None:
    with pytest.raises(InvalidJobData, match=r"^insert: DataError: "):
        async with guard("insert"):
            raise asyncpg.DataError("invalid input for query argument $1")
