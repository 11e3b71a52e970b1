-- Flow controls kept in the database, so every instance obeys the same ones: queue pause,
-- rate-limit token buckets, and concurrency keys on jobs.

-- A job may carry a concurrency key: at most N jobs of one (queue, key) run at once.
-- IF NOT EXISTS (the column and both indexes): on a large table an operator may add the
-- column (a catalog change, no rewrite) and build the indexes CONCURRENTLY beforehand,
-- without blocking writes (docs/operations/upgrading.md has the commands); built here, in
-- the migration's transaction, each index build holds the table locked against writes while
-- it reads the whole table. A concurrent build that failed leaves an invalid index under its
-- name, which the planner never uses and IF NOT EXISTS would keep: it is dropped first.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS concurrency_key text;

DO $$
DECLARE
    index_name text;
BEGIN
    FOREACH index_name IN ARRAY ARRAY['jobs_keyed', 'jobs_keyed_running'] LOOP
        IF EXISTS (SELECT 1 FROM pg_index
                   WHERE indexrelid = to_regclass(index_name) AND NOT indisvalid) THEN
            EXECUTE format('DROP INDEX %I', index_name);
        END IF;
    END LOOP;
END $$;

-- Waiting keyed jobs, by key then age: the flow claim steps from key to key through it (one
-- index descent per key, however many jobs a key has waiting), takes each key's oldest
-- ready jobs, and checks whether an older one of the key still waits. Unkeyed jobs (the
-- fast path) never write it.
CREATE INDEX IF NOT EXISTS jobs_keyed ON jobs (queue, concurrency_key, id)
    WHERE concurrency_key IS NOT NULL AND status IN ('pending', 'retrying');
-- Running keyed jobs: the flow claim counts them once per key. Apart from jobs_keyed, so a
-- key with a long backlog is counted without reading it. A keyed job enters one index when
-- inserted and the other when claimed, as many entries as one index of both would take.
CREATE INDEX IF NOT EXISTS jobs_keyed_running ON jobs (queue, concurrency_key)
    WHERE concurrency_key IS NOT NULL AND status = 'running';

-- One row per queue an operator paused or resumed; a queue without a row runs.
CREATE TABLE queue_state (
    queue      text PRIMARY KEY,
    paused     boolean     NOT NULL DEFAULT false,
    changed_at timestamptz NOT NULL DEFAULT now(),
    changed_by text
);

-- One token bucket per rate limit ('queue:NAME' or 'handler:NAME'), refilled and spent in
-- the claim transaction. Rate and burst come from the config, so they are not stored.
CREATE TABLE rate_buckets (
    name       text PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at timestamptz      NOT NULL DEFAULT clock_timestamp()
);
