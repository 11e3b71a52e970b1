-- The relay's claim in one round trip. A claim was a transaction of seven statements: BEGIN,
-- taking the batch before out of its lease and marking it sent, the claim lock, the expiry of
-- dead relays' leases, the claim itself, COMMIT. Each waited for the server and then for the
-- relay's event loop, which is busy publishing the batch in flight: the round trips, not the
-- work, set the relay's pace. These functions run the same statements in one call (a lease
-- locked before its rows, everywhere; the claim lock now taken before the mark). A VOLATILE
-- PL/pgSQL function takes a new snapshot for each statement (under READ COMMITTED,
-- PostgreSQL's default), so the claim after the lock still sees every lease committed
-- before it, as it did as a statement of its own.
-- The migration runs with search_path set to jobwire's schema: each function pins it.

-- Take rows `ids` out of the leases that name them, and return those rows: only leases
-- `leases` (the caller's own), or any lease when it is NULL (an operator's tools). A relay
-- whose lease expired and was taken over gets none of its rows back, so it cannot free or
-- charge rows another relay now holds. The caller then settles them (marks, releases or sets
-- them aside) in its transaction, after this: a lease is locked before its rows, as the
-- expiry in outbox_claim locks them. A lease left with none is deleted, one with others left
-- keeps those. The usual case is a whole batch marked at once: its lease is deleted. The ids
-- are matched through a hash (a lease names up to a batch of rows, `ids` as many).
CREATE FUNCTION outbox_unlease(ids bigint[], leases bigint[]) RETURNS SETOF bigint
    LANGUAGE sql VOLATILE SECURITY INVOKER
AS $$
WITH hit AS MATERIALIZED (
    SELECT l.id, array_agg(x.id) AS taken
    FROM outbox_leases l CROSS JOIN LATERAL unnest(l.ids) AS x(id)
    WHERE (outbox_unlease.leases IS NULL OR l.id = ANY(outbox_unlease.leases))
      AND x.id IN (SELECT unnest(outbox_unlease.ids))
    GROUP BY l.id
), emptied AS (
    DELETE FROM outbox_leases l USING hit
    WHERE l.id = hit.id AND cardinality(hit.taken) >= cardinality(l.ids)
), shrunk AS (
    UPDATE outbox_leases l
    SET ids = ARRAY(SELECT x FROM unnest(l.ids) x WHERE x <> ALL(outbox_unlease.ids))
    FROM hit WHERE l.id = hit.id AND cardinality(hit.taken) < cardinality(l.ids)
)
SELECT unnest(taken) FROM hit;
$$;
ALTER FUNCTION outbox_unlease(bigint[], bigint[]) SET search_path FROM CURRENT;

-- Mark rows `ids` sent (the broker confirmed them), out of `leases` (NULL: any). A mark
-- applies even to rows whose lease was taken over: the broker has them. attempts: a try
-- settled (sent). The usual mark is of one whole batch, `ids` in the order its lease names
-- them: the lease is deleted by its key, without matching the ids one by one.
CREATE FUNCTION outbox_mark_sent(ids bigint[], leases bigint[]) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
BEGIN
    IF cardinality(leases) = 1 THEN
        DELETE FROM outbox_leases l WHERE l.id = leases[1] AND l.ids = outbox_mark_sent.ids;
        IF NOT FOUND THEN
            PERFORM count(*) FROM outbox_unlease(ids, leases);
        END IF;
    ELSE
        PERFORM count(*) FROM outbox_unlease(ids, leases);
    END IF;
    UPDATE outbox o SET sent_at = now(), last_error = NULL, attempts = o.attempts + 1
    WHERE o.id = ANY(ids) AND o.sent_at IS NULL;
END
$$;
ALTER FUNCTION outbox_mark_sent(bigint[], bigint[]) SET search_path FROM CURRENT;

-- A relay's claim: its turn, then the batch before it marked sent (`sent`, out of `leases`),
-- then up to `max_rows` unsent rows of `output_name` leased for `lease_seconds`.
--
-- Claims of one output take turns (a transaction-scoped lock): a key in flight with one relay
-- is then never claimed by another, which keeps the order per key. With claims taking turns,
-- and a row in flight named by a lease, a claim needs no row locks (locking a row writes it).
--
-- Expiry: leases of this output that expired (their relay died, or could not reach the store
-- to settle them) are deleted, and an attempt counted on each of their rows still unsent, as
-- the relay would have counted it (a row that kills its relay each time shows it). A lease
-- its relay is settling right now (locked) is passed over, not waited for. Few leases and no
-- index but the key: a scan of a table that holds only the batches in flight.
--
-- The claim skips every row whose key (or, without a key, whose job) still has a row in
-- flight (named by a live lease, neither sent nor set aside): those wait for it, one after
-- another. Rows set aside (failed_at) are never claimed. The lease is one row of
-- outbox_leases naming the ids taken (0014); the rows themselves are not written. The
-- in-flight set is small (batches x relays), read once by primary key, and checked through
-- hashed subplans.
-- Planner steering, as for complete_jobs (a queue table's statistics are always stale): the
-- primary key also gives id order, and walking it the planner stepped over every sent row
-- still kept for retention; "ORDER BY created_at, id" is the order only the partial
-- outbox_unsent index has (created_at first: a transaction's rows share it, and its rows'
-- ids, in call order, break the tie). The rows are read by "id = ANY(ARRAY(...))":
-- primary-key lookups, not a hash of the whole table.
-- (since_at, since_id): where the relay's previous claim ended, so a relay draining a
-- backlog starts the index scan there instead of stepping over the entries of every row it
-- sent since the last vacuum; ('-infinity', 0) reads from the start, which the relay does
-- whenever it has caught up or something went wrong (rows released, a lease expired, a late
-- commit).
-- (resume_at, resume_id): where the same drain's next claim starts (its since_at,
-- since_id): just before the first row from (since_at, since_id) on that this claim did not
-- take (a busy key's, or one past the limit), else after the last row taken. Starting after
-- a skipped row would hand out a newer row of its key before it.
-- attempts: the try this claim is (the stored count is of tries settled: sent, failed, or
-- lost with an expired lease). headers: NULL for none, so most rows skip the JSON decode.
-- Rows come in claim order (created_at, id). What describes the claim as a whole (resume_at,
-- resume_id, lease_id) is on its first row only, NULL on the others: a client decodes each
-- value of each row, and a timestamp costs it more than the rest of a row.
CREATE FUNCTION outbox_claim(
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
    -- The turn first, then the mark: a claim never holds row locks while it waits for its
    -- turn (a mark of rows whose lease was taken over, waiting here, could otherwise hold
    -- the rows the claim ahead of it expires).
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
        SELECT o.id, o.created_at FROM outbox o
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
    SELECT o.id, o.job_id, o.n, o.key, NULLIF(o.headers, '{}'), o.body, o.attempts + 1,
           CASE WHEN row_number() OVER w = 1 THEN (SELECT r.at FROM resume r) END,
           CASE WHEN row_number() OVER w = 1 THEN (SELECT r.id FROM resume r) END,
           CASE WHEN row_number() OVER w = 1 THEN (SELECT d.id FROM leased d) END
    FROM outbox o WHERE o.id = ANY(ARRAY(SELECT p.id FROM picked p))
    WINDOW w AS (ORDER BY o.created_at, o.id)
    ORDER BY o.created_at, o.id;
END
$$;
ALTER FUNCTION outbox_claim(text, integer, double precision, timestamptz, bigint, bigint[],
                            bigint[]) SET search_path FROM CURRENT;
