-- The dashboard's failures page, throughput sparklines and live updates.

-- error_fingerprint: what groups failures. The exception type and message (the error's
-- first line) with what varies between occurrences replaced by placeholders: quoted
-- strings, UUIDs, hex ids, paths, numbers. "timeout after 3.2s on id 81723" and "timeout
-- after 1.1s on id 9" both read "timeout after <n>s on id <n>". jobwire.store.fingerprint
-- is the same function in Python (the memory store's), and a test holds the two equal.
-- Only pg_catalog functions: IMMUTABLE holds, and any caller's search_path finds them.
CREATE FUNCTION error_fingerprint(error text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
SELECT coalesce(nullif(left(btrim(regexp_replace(
    regexp_replace(
    regexp_replace(
    regexp_replace(
    regexp_replace(
    regexp_replace(
        split_part(coalesce(error, ''), E'\n', 1),
        '''[^'']*''|"[^"]*"', '<str>', 'g'),
        '[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}',
        '<uuid>', 'g'),
        '0[xX][0-9a-fA-F]+|\y(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{8,}\y', '<hex>', 'g'),
        '(^|[\s=(:])(/[^\s/]+)+/?', '\1<path>', 'g'),
        '[0-9]+([.][0-9]+)?', '<n>', 'g'),
    '\s+', ' ', 'g')), 200), ''), '(no message)')
$$;

-- Computed once, when a row becomes failed (the completion, the lease rescue, a poison
-- insert), by a row trigger whose WHEN clause leaves every other row version alone: the
-- claim, a success and a retry pay one comparison, not a function call. A trigger, not a
-- generated column: adding a STORED column rewrites the whole table under an exclusive
-- lock, and a trigger needs no change to the statements that write outcomes. A failed job
-- that is retried keeps its old value, which nothing reads: every reader also asks for
-- status = 'failed', and a new failure writes it again.
--
-- Failed rows kept from before this migration are NOT filled in here (an UPDATE of every
-- failed row, six regexps each, under the table lock this file holds): the rollup's leader
-- fills them afterwards, a small batch at a time (dash_backfill_fingerprints), and until
-- then the failures page shows them as one "(not yet grouped)" group.
--
-- IF NOT EXISTS (column and index): on a large table an operator may add the column and
-- build the index beforehand without blocking writes (docs/operations/dashboard.md):
--   ALTER TABLE jobwire.jobs ADD COLUMN IF NOT EXISTS error_fingerprint text;
--   CREATE INDEX CONCURRENTLY jobs_failed_fingerprint ON jobwire.jobs (error_fingerprint, id)
--       INCLUDE (queue, handler, finished_at) WHERE status = 'failed';
-- Adding a nullable column without a default rewrites nothing; the lock is brief.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS error_fingerprint text;

CREATE FUNCTION jobs_error_fingerprint() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.error_fingerprint := error_fingerprint(NEW.last_error);
    RETURN NEW;
END $$;
-- Pinned: the trigger fires for other programs' plain SQL too, whatever their search_path.
ALTER FUNCTION jobs_error_fingerprint() SET search_path FROM CURRENT;

CREATE TRIGGER jobs_error_fingerprint BEFORE INSERT OR UPDATE OF status, last_error ON jobs
    FOR EACH ROW WHEN (NEW.status = 'failed') EXECUTE FUNCTION jobs_error_fingerprint();

-- A concurrent build that failed leaves an invalid index under its name, which the planner
-- never uses and IF NOT EXISTS would keep: such an index is dropped first, then built (as
-- in migration 0004).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index
               WHERE indexrelid = to_regclass('jobs_failed_fingerprint') AND NOT indisvalid) THEN
        DROP INDEX jobs_failed_fingerprint;
    END IF;
END $$;

-- The failures page groups failed rows by fingerprint; the columns it shows are included,
-- so the grouping reads this index alone (an index-only scan on a vacuumed table). Only
-- failed rows enter it. Rows still to backfill (NULL) sort last in it, so the backfill
-- finds them through it too.
CREATE INDEX IF NOT EXISTS jobs_failed_fingerprint ON jobs (error_fingerprint, id)
    INCLUDE (queue, handler, finished_at) WHERE status = 'failed';

-- Finished attempts per minute, queue and final status: the overview's sparklines read an
-- hour of this (at most 60 rows a queue and status) instead of the history. The leader
-- fills it from jobs_finished, a minute at a time, off the jobs' own path (see
-- jobwire.dashboard.rollup); rows older than a day are dropped as it goes.
CREATE TABLE throughput_minutes (
    minute timestamptz NOT NULL,
    queue  text        NOT NULL,
    status text        NOT NULL,
    n      integer     NOT NULL,
    PRIMARY KEY (minute, queue, status)
);

-- Live dashboards poll a change marker (dash_change_marker: the jobs table's activity
-- counters); nothing here adds a cost to the jobs' own statements.
