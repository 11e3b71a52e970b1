-- Two partial indexes into the history, for the statements that look into it while the
-- table holds weeks of finished jobs. Each row version enters them only in its final state
-- (the earlier versions have no finished_at, and are not failed), so inserts and claims
-- write nothing more.
--
-- IF NOT EXISTS: on a large table an operator may build these beforehand without blocking
-- writes (CREATE INDEX CONCURRENTLY, the same definitions; see the README, Upgrading). A
-- concurrent build that failed leaves an invalid index under its name, which the planner
-- never uses and IF NOT EXISTS would keep: such an index is dropped first, then built.
DO $$
DECLARE
    index_name text;
BEGIN
    FOREACH index_name IN ARRAY ARRAY['jobs_finished', 'jobs_failed'] LOOP
        IF EXISTS (SELECT 1 FROM pg_index
                   WHERE indexrelid = to_regclass(index_name) AND NOT indisvalid) THEN
            EXECUTE format('DROP INDEX %I', index_name);
        END IF;
    END LOOP;
END $$;

-- jobs_finished: the retention purge looks for finished jobs older than retention.finished.
-- Without an index it read the table: every purge run ended with a batch that came back
-- short only after reading every row (194 ms at 1,000,000 rows here, growing with the
-- history: with 30 days of a busy queue, the whole history read every retention.every),
-- and once old and young rows share pages (a purged table reuses its space) each batch read
-- a long way to fill up. With it a batch reads its own rows, oldest first (8 ms). A
-- completion writes one entry (about 2 us a job, the completion statement with and without).
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

-- jobs_failed: failed and cancelled jobs, newest first, which is what an operator lists
-- when something goes wrong. Without it "jobs list --status failed" walked the whole
-- history back by id to find them (88 ms for 10 failed among 1,000,000 here, growing with
-- the history). Only jobs that end badly enter it.
CREATE INDEX IF NOT EXISTS jobs_failed ON jobs (id) WHERE status IN ('failed', 'cancelled');
