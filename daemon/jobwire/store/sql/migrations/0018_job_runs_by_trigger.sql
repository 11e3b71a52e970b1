-- job_runs rows leave with their job through a trigger on jobs, not a foreign key.
--
-- The foreign key (job_runs.job_id REFERENCES jobs ON DELETE CASCADE) made every attempt's
-- job_runs row check its job: a query per inserted row through SPI, which also locked the
-- job's row FOR KEY SHARE, a tenth of the server's time in a drain (perf; bench/RESULTS.md).
-- Every job_runs row jobwire writes comes from the rows its own UPDATE of jobs returns, in
-- the same statement (complete_many, the lease recovery, the give-back at a stop): the job
-- exists and is locked by that statement, so the check could never fail. What the key still
-- did is the cascade, and the triggers below do that: one DELETE per statement for all the
-- deleted jobs' runs (the cascade ran one per job).
--
-- A job deleted while an attempt's outcome is being written: the DELETE waits on the row the
-- completion locked, and the trigger's own statement, with a snapshot taken after that wait
-- under READ COMMITTED, sees and deletes the run it wrote.
DO $$
DECLARE
    fk name;
BEGIN
    -- By what it is, not by name: an operator's restore may have named it otherwise.
    FOR fk IN
        SELECT conname FROM pg_constraint
        WHERE conrelid = 'job_runs'::regclass AND confrelid = 'jobs'::regclass AND contype = 'f'
    LOOP
        EXECUTE format('ALTER TABLE job_runs DROP CONSTRAINT %I', fk);
    END LOOP;
END $$;

-- SECURITY DEFINER: the cascade ran with the table owner's rights, so a role that may delete
-- jobs never needed DELETE on job_runs; it still does not. The search_path is pinned, and a
-- trigger function cannot be called but as a trigger. The runs are found through job_runs_job
-- by "= ANY", a lookup per job, as the cascade's own per-job statement did: the planner knows
-- neither how many jobs a statement deleted nor, in a table filled since its last analyze,
-- how big job_runs is, and a join it planned read the whole of job_runs for each purge batch
-- (bench/purge.py: 22 ms a batch of 1,000 at 200,000 rows, against 9 by the cascade), an
-- "= ANY" it planned on a table it thought small 680 ms. Hence no sequential scan, here only.
CREATE FUNCTION jobs_delete_runs() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    DELETE FROM job_runs WHERE job_id = ANY (ARRAY(SELECT id FROM gone));
    RETURN NULL;
END $$;
ALTER FUNCTION jobs_delete_runs() SET search_path FROM CURRENT;
ALTER FUNCTION jobs_delete_runs() SET enable_seqscan = off;

CREATE TRIGGER jobs_delete_runs AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_delete_runs();

-- TRUNCATE jobs was refused while the key stood ("referenced in a foreign key constraint");
-- now it takes the runs with it rather than leaving them without their jobs. "TRUNCATE jobs,
-- job_runs" has emptied job_runs already, and holds it open, so TRUNCATE refuses (55006):
-- the DELETE then has nothing to read.
CREATE FUNCTION jobs_truncate_runs() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    BEGIN
        TRUNCATE job_runs;
    EXCEPTION WHEN object_in_use THEN
        DELETE FROM job_runs;
    END;
    RETURN NULL;
END $$;
ALTER FUNCTION jobs_truncate_runs() SET search_path FROM CURRENT;

CREATE TRIGGER jobs_truncate_runs AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_truncate_runs();
