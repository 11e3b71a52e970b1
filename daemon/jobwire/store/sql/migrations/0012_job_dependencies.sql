-- Job dependencies: enqueue(..., after => ARRAY[ids]). A job waiting on others is 'pending'
-- with run_at 'infinity': no claim takes it (claims want run_at <= now()), and the lateness
-- metric ignores it. Two triggers keep it right: one on insert (the dependencies' state at
-- that moment), one when a dependency finishes (wake or fail the waiting).

-- Constant defaults: adding the columns rewrites nothing.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS after_ids bigint[];
-- Set on a job once another waits on it: the finish trigger's WHEN tests it, so ordinary
-- jobs pay one comparison per status change and never call the function.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS has_dependents boolean NOT NULL DEFAULT false;

-- As in 0004: an operator may build the index beforehand (CONCURRENTLY); an invalid leftover
-- of a failed concurrent build is dropped first, which IF NOT EXISTS would otherwise keep.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index
               WHERE indexrelid = to_regclass('jobs_waiting_after') AND NOT indisvalid) THEN
        EXECUTE 'DROP INDEX jobs_waiting_after';
    END IF;
END $$;

-- The finish trigger finds the waiting dependents of a job by after_ids @> ARRAY[id]; only
-- waiting rows enter the index, so it stays as small as the number of waiting jobs.
CREATE INDEX IF NOT EXISTS jobs_waiting_after ON jobs USING gin (after_ids)
    WHERE after_ids IS NOT NULL AND status = 'pending';

-- Ordering against a dependency finishing at the same time: the UPDATE below takes each
-- dependency's row lock. If the dependency's completion committed first, the UPDATE (READ
-- COMMITTED) waits for it, then re-reads the row and RETURNING gives its final status: the
-- new job is born ready or failed, and the finish trigger (already run) never needed to see
-- it. If the insert locks first, the completion's UPDATE waits until the insert commits;
-- its finish trigger then runs its own statement with a new snapshot, which sees the new
-- waiting row and wakes or fails it. Either way the new job is never left waiting forever.
CREATE FUNCTION jobs_after_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
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
        NEW.run_at := 'infinity';
    END IF;
    RETURN NEW;
END $$;

-- The schema's search_path, fixed: the triggers fire for statements on the application's
-- own connections too (a plain INSERT INTO jobwire.jobs, an operator's UPDATE), whose
-- search_path does not name jobwire's schema.
ALTER FUNCTION jobs_after_on_insert() SET search_path FROM CURRENT;

CREATE TRIGGER jobs_after_on_insert BEFORE INSERT ON jobs
    FOR EACH ROW WHEN (NEW.after_ids IS NOT NULL)
    EXECUTE FUNCTION jobs_after_on_insert();

-- A dependency finished: its waiting dependents whose every dependency has succeeded become
-- ready now; on failure or cancel they fail, which fires this same trigger for their own
-- dependents (a cascade down the graph).
CREATE FUNCTION jobs_after_on_finish() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    woken integer;
BEGIN
    IF NEW.status = 'succeeded' THEN
        UPDATE jobs w SET run_at = now()
        WHERE w.after_ids @> ARRAY[NEW.id] AND w.after_ids IS NOT NULL
          AND w.status = 'pending' AND w.run_at = 'infinity'
          AND NOT EXISTS (SELECT 1 FROM jobs d
                          WHERE d.id = ANY(w.after_ids) AND d.status <> 'succeeded');
        GET DIAGNOSTICS woken = ROW_COUNT;
        IF woken > 0 THEN
            PERFORM pg_notify('jobwire_' || TG_TABLE_SCHEMA, 'jobs');
        END IF;
    ELSE
        UPDATE jobs w SET status = 'failed',
                          last_error = format('dependency %s %s', NEW.id, NEW.status),
                          finished_at = now()
        WHERE w.after_ids @> ARRAY[NEW.id] AND w.after_ids IS NOT NULL
          AND w.status = 'pending' AND w.run_at = 'infinity';
    END IF;
    RETURN NULL;
END $$;

ALTER FUNCTION jobs_after_on_finish() SET search_path FROM CURRENT;

CREATE TRIGGER jobs_after_on_finish AFTER UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (NEW.has_dependents AND NEW.status IN ('succeeded', 'failed', 'cancelled')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION jobs_after_on_finish();

DROP FUNCTION enqueue(text, jsonb, text, integer, timestamptz, interval, text, integer, jsonb,
                      text, interval, text, text);

-- As 0008's, with after => ARRAY[ids]: the new job waits until all of them succeeded (and
-- fails if one failed or was cancelled). Every earlier call, positional or named, still works.
CREATE FUNCTION enqueue(
    handler         text,
    payload         jsonb,
    queue           text        DEFAULT 'default',
    priority        integer     DEFAULT 0,
    run_at          timestamptz DEFAULT NULL,
    delay           interval    DEFAULT NULL,
    dedup_key       text        DEFAULT NULL,
    max_attempts    integer     DEFAULT NULL,
    headers         jsonb       DEFAULT '{}',
    source          text        DEFAULT 'sql',
    timeout         interval    DEFAULT NULL,
    concurrency_key text        DEFAULT NULL,
    unique_mode     text        DEFAULT 'forever',
    after           bigint[]    DEFAULT NULL
) RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
    AS $$
#variable_conflict use_column
DECLARE
    new_id bigint;
BEGIN
    -- A clear error for what the column checks would refuse less clearly.
    IF enqueue.timeout IS NOT NULL AND enqueue.timeout <= interval '0' THEN
        RAISE EXCEPTION 'jobwire.enqueue: timeout must be positive, not %', enqueue.timeout
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(enqueue.unique_mode, 'forever') NOT IN ('forever', 'active') THEN
        RAISE EXCEPTION 'jobwire.enqueue: unique_mode must be forever or active, not %',
            enqueue.unique_mode USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(enqueue.after) > 1000 THEN
        RAISE EXCEPTION 'jobwire.enqueue: after takes at most 1000 ids, not %',
            cardinality(enqueue.after) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Twice at most: the job holding the key may finish and let it go (unique_mode active)
    -- between the INSERT that met it and the SELECT that looks for it; the key is then free.
    FOR attempt IN 1..2 LOOP
        INSERT INTO jobs (handler, payload, queue, priority, run_at, dedup_key, max_attempts,
                          headers, source, timeout, concurrency_key, unique_mode, after_ids)
        VALUES (enqueue.handler, enqueue.payload, coalesce(enqueue.queue, 'default'),
                coalesce(enqueue.priority, 0),
                coalesce(enqueue.run_at, now()) + coalesce(enqueue.delay, interval '0'),
                enqueue.dedup_key, coalesce(enqueue.max_attempts, default_max_attempts()),
                coalesce(enqueue.headers, '{}'), enqueue.source,
                extract(epoch FROM enqueue.timeout)::double precision,
                enqueue.concurrency_key, coalesce(enqueue.unique_mode, 'forever'),
                enqueue.after)
        ON CONFLICT (dedup_key) DO NOTHING
        RETURNING id INTO new_id;
        IF new_id IS NULL THEN
            -- A statement of its own, so in READ COMMITTED it sees a row another
            -- transaction committed while this INSERT waited on its key.
            SELECT id INTO new_id FROM jobs WHERE dedup_key = enqueue.dedup_key;
        END IF;
        EXIT WHEN new_id IS NOT NULL;
    END LOOP;
    RETURN new_id;
END $$;
ALTER FUNCTION enqueue(text, jsonb, text, integer, timestamptz, interval, text, integer, jsonb,
                       text, interval, text, text, bigint[]) SET search_path FROM CURRENT;
