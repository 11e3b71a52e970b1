-- Schedules made at run time (CLI, admin API) live beside the config file's: origin says
-- which, so the start-up sync of the config touches only its own rows and run-time ones
-- survive restarts and config changes.
ALTER TABLE schedules ADD COLUMN origin text NOT NULL DEFAULT 'config'
    CHECK (origin IN ('config', 'api'));

-- A schedule's jobs, newest first: the schedules page shows each schedule's last job
-- without reading the history. Its build reads the whole jobs table while writes wait: on a
-- large table an operator may build it CONCURRENTLY beforehand (docs/operations/upgrading.md)
-- and IF NOT EXISTS keeps it; an invalid leftover of a failed concurrent build is dropped.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index
               WHERE indexrelid = to_regclass('jobs_schedule_id_idx') AND NOT indisvalid) THEN
        DROP INDEX jobs_schedule_id_idx;
    END IF;
END $$;

CREATE INDEX IF NOT EXISTS jobs_schedule_id_idx ON jobs (schedule_id, id DESC)
    WHERE schedule_id IS NOT NULL;
