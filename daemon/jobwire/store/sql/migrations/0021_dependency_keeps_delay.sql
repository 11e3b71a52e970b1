-- Job dependencies (0012) keep the job's delay. A waiting job's run_at is 'infinity' (no
-- claim takes it), and the insert trigger wrote that over the run_at it was enqueued with;
-- the finish trigger then woke it with run_at now(). A job enqueued with after and a delay
-- or a run_at in the future ran as soon as its dependencies succeeded, however early.
-- Now the insert trigger keeps the requested run_at in after_run_at, and the wake makes the
-- job due at that time, or now if it has passed: a delay counts from the enqueue, as
-- without after. The column means something only while the job waits (pending, run_at
-- 'infinity'); the wake and the failure cascade clear it.
--
-- And the wake no longer loses a race: a job waiting on two dependencies that finished in
-- two transactions at once was never woken (each saw the other still running). The finish
-- trigger now locks the waiting dependents before it checks them (see below).

-- A constant default (NULL): adding the column rewrites nothing.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS after_run_at timestamptz;

-- As 0012's, and after_run_at kept where run_at becomes 'infinity'. The same signature:
-- CREATE OR REPLACE keeps the function's owner and grants, and the trigger keeps calling it.
CREATE OR REPLACE FUNCTION jobs_after_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    dep record;
    found_ids bigint[] := '{}';
    missing bigint;
    bad_id bigint;
    bad_status text;
    all_done boolean := true;
BEGIN
    IF cardinality(NEW.after_ids) = 0 THEN
        NEW.after_ids := NULL;
        RETURN NEW;
    END IF;
    FOR dep IN
        UPDATE jobs SET has_dependents = true WHERE id = ANY(NEW.after_ids)
        RETURNING id, status
    LOOP
        found_ids := found_ids || dep.id;
        IF dep.status IN ('failed', 'cancelled') AND bad_id IS NULL THEN
            bad_id := dep.id;
            bad_status := dep.status;
        ELSIF dep.status <> 'succeeded' THEN
            all_done := false;
        END IF;
    END LOOP;
    SELECT a INTO missing FROM unnest(NEW.after_ids) AS a WHERE a <> ALL(found_ids) LIMIT 1;
    IF missing IS NOT NULL THEN
        -- 22023 (invalid_parameter_value): the caller's data, not a store outage.
        RAISE EXCEPTION 'jobwire: after: job % does not exist', missing
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF bad_id IS NOT NULL THEN
        NEW.status := 'failed';
        NEW.last_error := format('dependency %s %s', bad_id, bad_status);
        NEW.finished_at := now();
    ELSIF NOT all_done AND NEW.status = 'pending' THEN
        -- The time the job asked for (enqueue's run_at plus delay, or now()), for the wake.
        NEW.after_run_at := NEW.run_at;
        NEW.run_at := 'infinity';
    END IF;
    RETURN NEW;
END $$;

-- CREATE OR REPLACE cleared 0012's setting: the search_path again, fixed (the trigger fires
-- for statements on the application's own connections too).
ALTER FUNCTION jobs_after_on_insert() SET search_path FROM CURRENT;

-- As 0020's, but the wake makes a job due at the time it asked for, not before.
CREATE OR REPLACE FUNCTION jobs_after_on_finish() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    woken integer;
BEGIN
    IF NEW.status = 'succeeded' THEN
        -- The waiting dependents locked first, in a statement of their own. Two of a job's
        -- dependencies finishing in two transactions at once each saw the other still
        -- running and woke nothing: the job waited forever (since 0012). Now the second
        -- waits here for the first to commit, and its UPDATE below, a new statement with a
        -- new snapshot, sees it. Two batches locking shared dependents in opposite orders
        -- can deadlock: the server aborts one, which the daemon retries as an outage.
        PERFORM 1 FROM jobs w
        WHERE w.after_ids @> ARRAY[NEW.id] AND w.after_ids IS NOT NULL
          AND w.status = 'pending' AND w.run_at = 'infinity'
        ORDER BY w.id
        FOR UPDATE;
        -- greatest: a delay not run out yet makes the job due at its time; one that has (or
        -- none, after_run_at NULL as for rows that waited before this migration) now.
        -- Cleared: the job no longer waits, and nothing reads the column after.
        UPDATE jobs w SET run_at = greatest(now(), coalesce(w.after_run_at, now())),
                          after_run_at = NULL
        WHERE w.after_ids @> ARRAY[NEW.id] AND w.after_ids IS NOT NULL
          AND w.status = 'pending' AND w.run_at = 'infinity'
          AND NOT EXISTS (SELECT 1 FROM jobs d
                          WHERE d.id = ANY(w.after_ids) AND d.status <> 'succeeded');
        GET DIAGNOSTICS woken = ROW_COUNT;
        -- Woken with a delay still to run, a job is not claimable yet; the notice costs one
        -- empty claim, and the pool's poll finds it when it is due, as any delayed job.
        IF woken > 0 THEN
            PERFORM pg_notify('jobwire_' || TG_TABLE_SCHEMA, 'jobs');
        END IF;
    ELSE
        -- Every waiting job downstream, found level by level through the jobs_waiting_after
        -- index; UNION (not ALL) visits each once, so even a cycle an operator's UPDATE of
        -- after_ids made ends. Each names the dependency it was reached through, as the
        -- recursive cascade did: this job for its direct dependents, else one that fails
        -- here with it.
        WITH RECURSIVE down(id) AS (
            SELECT w.id FROM jobs w
            WHERE w.after_ids @> ARRAY[NEW.id] AND w.after_ids IS NOT NULL
              AND w.status = 'pending' AND w.run_at = 'infinity'
            UNION
            SELECT w.id FROM down JOIN jobs w
              ON w.after_ids @> ARRAY[down.id] AND w.after_ids IS NOT NULL
             AND w.status = 'pending' AND w.run_at = 'infinity'
        ), doomed AS (
            SELECT array_agg(id) AS ids FROM down
        )
        UPDATE jobs w SET status = 'failed',
                          last_error = CASE
                              WHEN NEW.id = ANY(w.after_ids)
                              THEN format('dependency %s %s', NEW.id, NEW.status)
                              ELSE format('dependency %s failed',
                                          (SELECT min(a) FROM unnest(w.after_ids) AS a
                                           WHERE a = ANY(doomed.ids)))
                          END,
                          finished_at = now(),
                          after_run_at = NULL
        FROM doomed
        WHERE w.id = ANY(doomed.ids) AND w.status = 'pending' AND w.run_at = 'infinity';
    END IF;
    RETURN NULL;
END $$;

-- CREATE OR REPLACE cleared 0020's settings: the search_path, fixed, and bitmap scans
-- allowed inside (jobwire's sessions turn them off, and the GIN index jobs_waiting_after is
-- read by bitmap scans only; see 0020).
ALTER FUNCTION jobs_after_on_finish() SET search_path FROM CURRENT;
ALTER FUNCTION jobs_after_on_finish() SET enable_bitmapscan = on;

-- As 0020's; a retried job that waits again keeps the run_at its retry set, not the one it
-- was first enqueued with. An operator's retry means "run now" (jobwire's retry sets run_at
-- now()): the job runs as soon as its dependencies succeed, as one whose dependencies all
-- did already runs at once. The first enqueue's delay counted from that enqueue and was
-- spent, or cut short by the retry. An operator's own UPDATE that sets a later run_at gets
-- that time. A run_at left at 'infinity' (a waiter cancelled while it waited, set pending
-- with no run_at) asks for no time: NULL, woken now, not parked at 'infinity' for good.
CREATE OR REPLACE FUNCTION jobs_after_on_retry() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    dep record;
    bad_id bigint;
    bad_status text;
    all_done boolean := true;
BEGIN
    -- A dependency purged since counts as succeeded, as in the finish trigger's wake.
    FOR dep IN
        SELECT id, status FROM jobs WHERE id = ANY(NEW.after_ids) ORDER BY id FOR SHARE
    LOOP
        IF dep.status IN ('failed', 'cancelled') AND bad_id IS NULL THEN
            bad_id := dep.id;
            bad_status := dep.status;
        ELSIF dep.status <> 'succeeded' THEN
            all_done := false;
        END IF;
    END LOOP;
    IF bad_id IS NOT NULL THEN
        UPDATE jobs SET status = 'failed',
                        last_error = format('dependency %s %s', bad_id, bad_status),
                        finished_at = now(),
                        after_run_at = NULL
        WHERE id = NEW.id AND status = NEW.status;
    ELSIF NOT all_done THEN
        UPDATE jobs SET run_at = 'infinity', after_run_at = nullif(NEW.run_at, 'infinity')
        WHERE id = NEW.id AND status = NEW.status;
    END IF;
    RETURN NULL;
END $$;

ALTER FUNCTION jobs_after_on_retry() SET search_path FROM CURRENT;
