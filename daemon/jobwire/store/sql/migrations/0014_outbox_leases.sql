-- The relay's leases, one row per claimed batch instead of a write to every row it claims.
-- A claim used to set lease_until (and count an attempt) on each row it took, then the mark
-- rewrote each row again: two new versions of every row, neither of them a HOT update (the
-- columns are in the partial indexes' predicates). Now a claim inserts one row here naming
-- the ids it took; marking, releasing or setting aside a row takes it out of its lease, and
-- a lease left empty is deleted. A row is in flight while a lease that has not expired
-- names it and it is neither sent nor set aside. A relay that dies leaves its lease to
-- expire; the next claim of that output deletes it and counts an attempt on its rows.
-- No index but the key: the table holds only the batches in flight (a few per output).
CREATE TABLE outbox_leases (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    output      text        NOT NULL,
    ids         bigint[]    NOT NULL,
    lease_until timestamptz NOT NULL
);

-- outbox.lease_until is no longer read or written: a row an earlier relay held when this
-- ran is free at once (it may go out twice, with the same message id; see
-- docs/operations/upgrading.md). The column stays, unused; dropping it gains nothing now.
DROP INDEX IF EXISTS outbox_in_flight;
