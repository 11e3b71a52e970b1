-- Job dependencies (0012), two fixes.
--
-- The failure cascade no longer recurses. 0012's finish trigger failed a job's waiting
-- dependents with an UPDATE that fired the same trigger for each of them, one level deeper
-- each: past a few hundred links of a chain the server's stack ran out (max_stack_depth
-- 2MB: between 400 and 600 links). The statement that finished the chain's head was then
-- refused: an operator's cancel, and a worker's write of a failure, which the completer then
-- wrote as a bare failure (refused too) and dropped; the lease rescue, which refused in turn,
-- also stopped every other expired lease from being taken back. The head stayed running and
-- the chain waited forever. Now one statement fails every waiting job downstream (a
-- recursive query); their own triggers then find nothing left waiting, so the nesting is two
-- levels, whatever the chain's length.
--
-- A retried job waits for its dependencies again. retry set a failed or cancelled job
-- pending with run_at now(), after_ids or not: a waiter cancelled while its dependency ran,
-- or failed by a failed dependency, then ran at once, before (or without) what it waits for.
-- A trigger now applies the insert's rule to the retried row: a dependency failed or
-- cancelled fails it again; one not finished yet makes it wait (run_at infinity); all
-- succeeded (or purged) leaves it ready. It fires after the statement's rows are all
-- updated, so one retry of a dependency and its dependents together brings them all back.

-- The same signature: CREATE OR REPLACE keeps the function's owner and grants, and the
-- trigger 0012 created keeps calling it.
CREATE OR REPLACE FUNCTION jobs_after_on_finish() RETURNS trigger LANGUAGE plpgsql AS $$
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
                          finished_at = now()
        FROM doomed
        WHERE w.id = ANY(doomed.ids) AND w.status = 'pending' AND w.run_at = 'infinity';
    END IF;
    RETURN NULL;
END $$;

-- CREATE OR REPLACE cleared 0012's setting: the search_path again, fixed. And bitmap scans
-- allowed inside: jobwire's sessions turn them off (pg_base.server_settings), and a GIN
-- index such as jobs_waiting_after is read by bitmap scans only; without them each lookup
-- of a finished job's dependents read every pending job instead.
ALTER FUNCTION jobs_after_on_finish() SET search_path FROM CURRENT;
ALTER FUNCTION jobs_after_on_finish() SET enable_bitmapscan = on;

-- A failed or cancelled job with dependencies set pending again (an operator's retry, or
-- their own UPDATE). The dependencies' rows are locked (FOR SHARE) as the insert trigger's
-- UPDATE locks them, for the same reason (see 0012): a dependency finishing at the same
-- moment either committed first, and its final status is read here, or waits for this
-- transaction, and its finish trigger then sees this job waiting.
CREATE FUNCTION jobs_after_on_retry() RETURNS trigger LANGUAGE plpgsql AS $$
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
                        finished_at = now()
        WHERE id = NEW.id AND status = NEW.status;
    ELSIF NOT all_done THEN
        UPDATE jobs SET run_at = 'infinity' WHERE id = NEW.id AND status = NEW.status;
    END IF;
    RETURN NULL;
END $$;

ALTER FUNCTION jobs_after_on_retry() SET search_path FROM CURRENT;

-- AFTER, not BEFORE: a BEFORE trigger's queries see only the rows its statement updated
-- earlier, so a dependency retried in the same statement would count as failed or not
-- depending on the rows' order. An AFTER trigger sees them all.
CREATE TRIGGER jobs_after_on_retry AFTER UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (NEW.after_ids IS NOT NULL AND NEW.status IN ('pending', 'retrying')
          AND OLD.status IN ('failed', 'cancelled'))
    EXECUTE FUNCTION jobs_after_on_retry();
