-- The claim reads each row once. 0016's claim picked the rows through the outbox_unsent
-- index (reading each from the table, for its key and job), then read them all again by
-- primary key for what it returns, and sorted them: for a batch of 500, that second read
-- was about a fifth of the claim's time in the server. The rows it picks now carry their
-- columns, and what the claim returns comes from them. Everything else is 0016's: the turn,
-- the mark, the expiry, which rows are picked, the lease, the resume and the columns
-- returned (see 0016 for why each is as it is).
--
-- And the claim refuses to run under an isolation level other than READ COMMITTED. It reads
-- the leases after its turn comes, and only READ COMMITTED takes a snapshot per statement:
-- under REPEATABLE READ or SERIALIZABLE (a database or role whose
-- default_transaction_isolation is set so) the snapshot is the one from before the wait,
-- without the lease the claim ahead of it took, and two relays would send one key's rows
-- side by side, out of order. The error names the setting; the relay logs it and retries.
CREATE OR REPLACE FUNCTION outbox_claim(
    output_name text, max_rows integer, lease_seconds double precision,
    since_at timestamptz, since_id bigint, sent bigint[], leases bigint[]
) RETURNS TABLE (
    id bigint, job_id bigint, n integer, key text, headers jsonb, body bytea,
    attempts integer, resume_at timestamptz, resume_id bigint, lease_id bigint
)
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
#variable_conflict use_column
BEGIN
    -- (READ UNCOMMITTED is READ COMMITTED in PostgreSQL.)
    IF current_setting('transaction_isolation') NOT IN ('read committed', 'read uncommitted') THEN
        RAISE EXCEPTION 'jobwire''s outbox claim needs READ COMMITTED, not %',
            current_setting('transaction_isolation')
            USING HINT = 'set default_transaction_isolation to ''read committed'' for '
                         'jobwire''s database role: ALTER ROLE <role> SET '
                         'default_transaction_isolation = ''read committed''';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('jobwire.outbox:' || output_name, 0));
    IF cardinality(sent) > 0 THEN
        PERFORM outbox_mark_sent(sent, leases);
    END IF;
    WITH expired AS (
        DELETE FROM outbox_leases WHERE outbox_leases.id IN (
            SELECT l.id FROM outbox_leases l
            WHERE l.output = output_name AND l.lease_until <= now()
            FOR UPDATE SKIP LOCKED)
        RETURNING outbox_leases.ids
    )
    UPDATE outbox o SET attempts = o.attempts + 1,
                        last_error = 'lease expired: the relay that claimed it did not settle it'
    WHERE o.id = ANY(ARRAY(SELECT unnest(e.ids) FROM expired e))
      AND o.sent_at IS NULL AND o.failed_at IS NULL;
    RETURN QUERY
    WITH live AS MATERIALIZED (
        SELECT o.id, o.key, o.job_id FROM outbox o
        WHERE o.id = ANY(ARRAY(SELECT unnest(l.ids) FROM outbox_leases l
                               WHERE l.output = output_name AND l.lease_until > now()))
          AND o.sent_at IS NULL AND o.failed_at IS NULL
    ), picked AS MATERIALIZED (
        SELECT o.id, o.created_at, o.job_id, o.n, o.key, o.headers, o.body, o.attempts
        FROM outbox o
        WHERE o.output = output_name AND o.sent_at IS NULL AND o.failed_at IS NULL
          AND (o.created_at, o.id) > (since_at, since_id)
          AND o.id NOT IN (SELECT v.id FROM live v)
          AND (o.key IS NULL OR o.key NOT IN (SELECT v.key FROM live v WHERE v.key IS NOT NULL))
          AND (o.key IS NOT NULL OR o.job_id IS NULL OR o.job_id NOT IN (
              SELECT v.job_id FROM live v WHERE v.key IS NULL AND v.job_id IS NOT NULL))
        ORDER BY o.created_at, o.id
        LIMIT max_rows
    ), skipped AS MATERIALIZED (
        SELECT s.created_at, s.id FROM outbox s
        WHERE s.output = output_name AND s.sent_at IS NULL AND s.failed_at IS NULL
          AND (s.created_at, s.id) > (since_at, since_id)
          AND s.id NOT IN (SELECT p.id FROM picked p)
        ORDER BY s.created_at, s.id
        LIMIT 1
    ), leased AS (
        -- Runs whether or not the query below reads it (a data-modifying WITH always does).
        INSERT INTO outbox_leases (output, ids, lease_until)
        SELECT output_name, array_agg(p.id ORDER BY p.created_at, p.id),
               now() + make_interval(secs => lease_seconds)
        FROM picked p
        HAVING count(*) > 0
        RETURNING outbox_leases.id
    ), resume AS (
        SELECT r.at, r.id FROM (
            SELECT 0 AS pick, k.created_at AS at, k.id - 1 AS id FROM skipped k
            UNION ALL
            (SELECT 1, p.created_at, p.id FROM picked p
             ORDER BY p.created_at DESC, p.id DESC LIMIT 1)
        ) r
        ORDER BY r.pick
        LIMIT 1
    )
    SELECT p.id, p.job_id, p.n, p.key, NULLIF(p.headers, '{}'), p.body, p.attempts + 1,
           CASE WHEN row_number() OVER w = 1 THEN (SELECT r.at FROM resume r) END,
           CASE WHEN row_number() OVER w = 1 THEN (SELECT r.id FROM resume r) END,
           CASE WHEN row_number() OVER w = 1 THEN (SELECT d.id FROM leased d) END
    FROM picked p
    WINDOW w AS (ORDER BY p.created_at, p.id)
    ORDER BY p.created_at, p.id;
END
$$;

-- CREATE OR REPLACE resets the function's settings: set again.
ALTER FUNCTION outbox_claim(text, integer, double precision, timestamptz, bigint, bigint[],
                            bigint[]) SET search_path FROM CURRENT;
