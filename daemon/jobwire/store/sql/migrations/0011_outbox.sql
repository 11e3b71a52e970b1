-- The transactional outbox: a handler's ctx.publish() becomes a row here, written in the
-- same transaction as its attempt's successful outcome; a relay per output sends the rows
-- with the broker's confirmation and marks them sent only after it. No foreign key to jobs:
-- the retention purge removes jobs and sent rows on their own clocks.
CREATE TABLE outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    output      text        NOT NULL,
    job_id      bigint,
    n           integer     NOT NULL DEFAULT 1,
    key         text,
    headers     jsonb       NOT NULL DEFAULT '{}',
    body        bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz,
    attempts    integer     NOT NULL DEFAULT 0,
    last_error  text,
    -- Set aside: the broker refused the row for good, or it failed the output's
    -- max_attempts times. No relay claims it again; the key's later rows go on.
    failed_at   timestamptz,
    -- A relay claims rows by setting this in a short transaction, then publishes outside
    -- it; a relay that dies leaves rows that another takes once the lease has passed.
    lease_until timestamptz
);

-- The relay's claim: unsent rows of one output, oldest first (see outbox_claim).
CREATE INDEX outbox_unsent ON outbox (output, created_at, id)
    WHERE sent_at IS NULL AND failed_at IS NULL;
-- The rows in flight (claimed, not yet marked or released): few, read by every claim.
CREATE INDEX outbox_in_flight ON outbox (output)
    WHERE sent_at IS NULL AND failed_at IS NULL AND lease_until IS NOT NULL;
-- The retention purge of sent rows.
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
