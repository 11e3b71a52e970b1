-- Every SQL statement jobwire runs, by name. Each connection's search_path is the
-- configured schema, so no statement names it.

-- name: insert_jobs
-- Insert a batch in one round trip; a dedup_key already present is skipped, not an error.
-- ORDER BY ord keeps identity values ascending in input order, which the caller relies on.
-- Rows with run_now are handed straight to worker $14 (no claim round trip): they start
-- life running, under a lease, as their first attempt (unless stored failed).
-- $17-$20 are Kafka positions (empty for queues), stored by the same statement, so in the
-- same transaction as the rows, without a BEGIN and COMMIT round trip each. Never
-- backwards: after a rebalance a former owner may still store a batch it had taken; its
-- rows are deduplicated and its older offset must not undo the new owner's progress.
WITH positions AS (
    INSERT INTO kafka_offsets (group_id, topic, partition, next_offset)
    SELECT o.group_id, o.topic, o.partition, o.next_offset
    FROM unnest($17::text[], $18::text[], $19::int[], $20::bigint[])
         AS o(group_id, topic, partition, next_offset)
    ON CONFLICT (group_id, topic, partition) DO UPDATE
    SET next_offset = GREATEST(kafka_offsets.next_offset, EXCLUDED.next_offset),
        updated_at = now()
)
INSERT INTO jobs (handler, queue, priority, max_attempts, run_at, payload, body, content_type,
                  headers, source, dedup_key, parent_id, status, last_error, finished_at,
                  attempts, worker_id, lease_until, started_at)
SELECT j.handler, j.queue, j.priority, j.max_attempts, now() + make_interval(secs => j.delay),
       j.payload::jsonb, j.body, j.content_type, coalesce(j.headers::jsonb, '{}'::jsonb), j.source,
       j.dedup_key, j.parent_id,
       CASE WHEN j.failed_reason IS NOT NULL THEN 'failed'
            WHEN j.run_now THEN 'running' ELSE 'pending' END,
       j.failed_reason,
       CASE WHEN j.failed_reason IS NULL THEN NULL ELSE now() END,
       CASE WHEN j.run_now AND j.failed_reason IS NULL THEN 1 ELSE 0 END,
       CASE WHEN j.run_now AND j.failed_reason IS NULL THEN $14::text END,
       CASE WHEN j.run_now AND j.failed_reason IS NULL
            THEN now() + make_interval(secs => $15::float8) END,
       CASE WHEN j.run_now AND j.failed_reason IS NULL THEN now() END
FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::float8[], $6::text[], $7::bytea[],
            $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[], $13::text[],
            $16::bool[])
     WITH ORDINALITY AS j(handler, queue, priority, max_attempts, delay, payload, body, content_type,
                          headers, source, dedup_key, parent_id, failed_reason, run_now, ord)
ORDER BY j.ord
ON CONFLICT (dedup_key) DO NOTHING
RETURNING id, dedup_key;

-- name: ids_by_dedup_key
SELECT id, dedup_key FROM jobs WHERE dedup_key = ANY($1::text[]);

-- name: claim_jobs
-- Take up to $3 ready jobs, at most n per queue, highest priority first, then FIFO.
-- SKIP LOCKED lets any number of pools claim side by side without waiting on each other.
WITH wanted AS (
    SELECT w.queue, w.n FROM unnest($1::text[], $2::int[]) AS w(queue, n)
), candidates AS (
    SELECT c.id, c.priority
    FROM wanted w CROSS JOIN LATERAL (
        SELECT id, priority FROM jobs
        WHERE queue = w.queue AND status IN ('pending', 'retrying') AND run_at <= now()
        ORDER BY priority DESC, id
        LIMIT w.n
        FOR UPDATE SKIP LOCKED
    ) c
), chosen AS (
    SELECT id FROM candidates ORDER BY priority DESC, id LIMIT $3
)
UPDATE jobs SET status = 'running', attempts = jobs.attempts + 1, worker_id = $4,
                lease_until = now() + make_interval(secs => $5), started_at = now(),
                progress = NULL, progress_note = NULL
FROM chosen WHERE jobs.id = chosen.id
-- What a running job needs, in this order (postgres._claimed reads it by position): a
-- claim returns many rows and decoding every column of each cost more than the claim's
-- own SQL in a profile.
RETURNING jobs.id, jobs.handler, jobs.queue, jobs.priority, jobs.attempts, jobs.max_attempts,
          jobs.payload, jobs.run_at, jobs.created_at, jobs.body, jobs.content_type,
          jobs.headers, jobs.source, jobs.dedup_key, jobs.worker_id, jobs.started_at,
          jobs.parent_id, jobs.lease_until;

-- name: complete_jobs
-- Record a batch of attempt outcomes, each with its job_runs row. Only the worker holding
-- the attempt may finish it: a worker whose lease was taken back finds no row to update.
-- Each outcome is read from the arrays by its position, not by joining an unnest() of them:
-- a queue table's statistics are always stale, and with them the planner joined the two
-- sets by a nested loop comparing every pair, or scanned the whole table to hash it. The
-- position comes from $9, a JSON object of job id -> position, one lookup per row;
-- array_position(), before, scanned the id array for every row, a cost growing with the
-- square of the batch (bench/complete_statement.py compares the two). Planner steering,
-- also on purpose: "id = ANY" asks for primary-key lookups, and there is no "status =
-- 'running'" test, which would let the planner pick the partial jobs_running index, whose
-- dead entries (every job run since the last vacuum) it then scans. worker_id is set
-- exactly while a job runs, so "worker_id = $8" says running.
WITH held AS (
    SELECT id, ($9::jsonb ->> id::text)::int AS i
    FROM jobs WHERE id = ANY($1::bigint[]) AND worker_id = $8
), done AS (
    UPDATE jobs j SET status = ($3::text[])[h.i],
                      result = ($5::text[])[h.i]::jsonb,
                      last_error = ($6::text[])[h.i],
                      run_at = CASE WHEN ($3::text[])[h.i] = 'retrying'
                                    THEN now() + make_interval(secs => ($7::float8[])[h.i])
                                    ELSE j.run_at END,
                      finished_at = CASE WHEN ($3::text[])[h.i] IN ('succeeded', 'failed',
                                                                     'cancelled')
                                         THEN now() END,
                      progress = CASE WHEN ($3::text[])[h.i] = 'succeeded' THEN 100
                                      ELSE j.progress END,
                      lease_until = NULL, worker_id = NULL
    FROM held h
    WHERE j.id = h.id AND j.attempts = ($2::int[])[h.i]
    RETURNING j.id, j.started_at, h.i
), runs AS (
    INSERT INTO job_runs (job_id, attempt, worker_id, status, started_at, finished_at, duration,
                          error, result)
    SELECT done.id, ($2::int[])[done.i], $8, ($3::text[])[done.i],
           coalesce(done.started_at, now()), now(), ($4::float8[])[done.i],
           ($6::text[])[done.i], ($5::text[])[done.i]::jsonb
    FROM done
)
SELECT count(*) FROM done;

-- name: renew_leases
-- One statement renews the leases of the jobs this worker is running ($3) and reports
-- cancel requests. Only those: a job it gave up on (its lease could not be renewed in
-- time) must be left to expire, or it would stay "running" here forever. An id asked for
-- but not returned is no longer this worker's (its lease was recovered, perhaps another
-- worker runs it now): the worker stops its copy and writes no outcome.
UPDATE jobs SET lease_until = now() + make_interval(secs => $2)
WHERE id = ANY($3::bigint[]) AND worker_id = $1
RETURNING id, cancel_requested;

-- name: recover_expired_leases
-- Take back jobs whose worker stopped heartbeating. The lost attempt counts.
WITH expired AS (
    SELECT id, worker_id, started_at FROM jobs
    WHERE status = 'running' AND lease_until < now()
    FOR UPDATE SKIP LOCKED
), lost AS (
    UPDATE jobs SET status = CASE WHEN cancel_requested THEN 'cancelled'
                                  WHEN attempts >= max_attempts THEN 'failed'
                                  ELSE 'retrying' END,
                    last_error = 'lease expired: worker ' || coalesce(jobs.worker_id, '?')
                                 || ' stopped heartbeating during attempt ' || attempts,
                    finished_at = CASE WHEN cancel_requested OR attempts >= max_attempts
                                       THEN now() END,
                    run_at = now(), lease_until = NULL, worker_id = NULL
    FROM expired WHERE jobs.id = expired.id
    RETURNING jobs.id, jobs.attempts
), runs AS (
    INSERT INTO job_runs (job_id, attempt, worker_id, status, started_at, finished_at, duration,
                          error)
    SELECT lost.id, lost.attempts, coalesce(expired.worker_id, '?'), 'lost',
           coalesce(expired.started_at, now()), now(),
           extract(epoch FROM now() - coalesce(expired.started_at, now())), 'lease expired'
    FROM lost JOIN expired ON expired.id = lost.id
)
SELECT id FROM lost;

-- name: release_unknown_jobs
-- Rows running for worker $1 that it does not run ($2: the ids it does): an insert of
-- directly started jobs, or a claim, committed but its answer was lost with the
-- connection. No attempt started, so none is counted.
WITH orphans AS (
    SELECT id FROM jobs
    WHERE worker_id = $1 AND status = 'running' AND NOT (id = ANY($2::bigint[]))
    FOR UPDATE
)
UPDATE jobs SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'pending' END,
                finished_at = CASE WHEN cancel_requested THEN now() END,
                attempts = jobs.attempts - 1, lease_until = NULL, worker_id = NULL,
                started_at = NULL, run_at = now()
FROM orphans WHERE jobs.id = orphans.id
RETURNING jobs.id;

-- name: release_jobs
-- Graceful stop: give unfinished jobs back without counting the interrupted attempt.
WITH mine AS (
    SELECT id, attempts, started_at FROM jobs
    WHERE worker_id = $1 AND status = 'running' AND id = ANY($2::bigint[])
    FOR UPDATE
), back AS (
    UPDATE jobs SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'pending' END,
                    finished_at = CASE WHEN cancel_requested THEN now() END,
                    attempts = jobs.attempts - 1, lease_until = NULL, worker_id = NULL,
                    started_at = NULL, run_at = now()
    FROM mine WHERE jobs.id = mine.id
    RETURNING jobs.id
), runs AS (
    INSERT INTO job_runs (job_id, attempt, worker_id, status, started_at, finished_at, duration,
                          error)
    SELECT mine.id, mine.attempts, $1, 'interrupted', coalesce(mine.started_at, now()), now(),
           extract(epoch FROM now() - coalesce(mine.started_at, now())), 'given back at shutdown'
    FROM back JOIN mine ON mine.id = back.id
)
SELECT id FROM back;

-- name: cancel_job
-- A waiting job is cancelled at once; a running one is flagged for its worker.
UPDATE jobs SET
    status = CASE WHEN status IN ('pending', 'retrying') THEN 'cancelled' ELSE status END,
    finished_at = CASE WHEN status IN ('pending', 'retrying') THEN now() ELSE finished_at END,
    cancel_requested = (status = 'running') OR cancel_requested
WHERE id = $1
RETURNING status;

-- name: retry_jobs
-- Run failed or cancelled jobs again, with a fresh allowance of attempts.
UPDATE jobs SET status = 'pending', max_attempts = attempts + $3, run_at = now(),
                finished_at = NULL, cancel_requested = false, result = NULL
WHERE (id = ANY($1::bigint[]) OR status = $2) AND status IN ('failed', 'cancelled')
RETURNING id;

-- name: set_progress
UPDATE jobs SET progress = $2, progress_note = $3
WHERE id = $1 AND status = 'running';

-- name: existing_ids
SELECT id FROM jobs WHERE id = ANY($1::bigint[]);

-- name: get_job
SELECT * FROM jobs WHERE id = $1;

-- name: list_jobs
-- Newest first, any status or succeeded ($1): walking back by id finds them at once, as
-- nearly every row has succeeded. The other statuses have statements of their own below,
-- each naming its partial index's statuses as literals: a prepared statement's generic
-- plan cannot use a partial index for "status = $1" alone, and walking the history back to
-- find a few failed jobs costs more the longer the history (bench/history.py).
SELECT * FROM jobs
WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR queue = $2)
  AND ($4::bigint IS NULL OR id < $4)
ORDER BY id DESC
LIMIT $3;

-- name: list_failed_jobs
-- Failed or cancelled ($1), through jobs_failed (migration 0004), in its order.
SELECT * FROM jobs
WHERE status IN ('failed', 'cancelled') AND status = $1
  AND ($2::text IS NULL OR queue = $2) AND ($4::bigint IS NULL OR id < $4)
ORDER BY id DESC
LIMIT $3;

-- name: list_ready_jobs
-- Pending or retrying ($1), through jobs_ready: however old they are, never the history.
SELECT * FROM jobs
WHERE status IN ('pending', 'retrying') AND status = $1
  AND ($2::text IS NULL OR queue = $2) AND ($4::bigint IS NULL OR id < $4)
ORDER BY id DESC
LIMIT $3;

-- name: list_running_jobs
-- Running ($1), through jobs_running.
SELECT * FROM jobs
WHERE status = 'running' AND status = $1
  AND ($2::text IS NULL OR queue = $2) AND ($4::bigint IS NULL OR id < $4)
ORDER BY id DESC
LIMIT $3;

-- name: find_jobs
-- list_jobs's family with two more filters, handler ($5) and source ($6), for the
-- dashboard (the API's statements above keep their four parameters). Same reasoning: any
-- status or succeeded walks back by id; the others read their partial index.
SELECT * FROM jobs
WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR queue = $2)
  AND ($4::bigint IS NULL OR id < $4)
  AND ($5::text IS NULL OR handler = $5) AND ($6::text IS NULL OR source = $6)
ORDER BY id DESC
LIMIT $3;

-- name: find_failed_jobs
SELECT * FROM jobs
WHERE status IN ('failed', 'cancelled') AND status = $1
  AND ($2::text IS NULL OR queue = $2) AND ($4::bigint IS NULL OR id < $4)
  AND ($5::text IS NULL OR handler = $5) AND ($6::text IS NULL OR source = $6)
ORDER BY id DESC
LIMIT $3;

-- name: find_ready_jobs
SELECT * FROM jobs
WHERE status IN ('pending', 'retrying') AND status = $1
  AND ($2::text IS NULL OR queue = $2) AND ($4::bigint IS NULL OR id < $4)
  AND ($5::text IS NULL OR handler = $5) AND ($6::text IS NULL OR source = $6)
ORDER BY id DESC
LIMIT $3;

-- name: find_running_jobs
SELECT * FROM jobs
WHERE status = 'running' AND status = $1
  AND ($2::text IS NULL OR queue = $2) AND ($4::bigint IS NULL OR id < $4)
  AND ($5::text IS NULL OR handler = $5) AND ($6::text IS NULL OR source = $6)
ORDER BY id DESC
LIMIT $3;

-- name: count_failed_jobs
-- Counted up to a cap ($5) through the status's partial index, as its listing reads it:
-- a page says "10,000+" rather than count the history. Succeeded jobs are not counted.
SELECT count(*) FROM (
    SELECT 1 FROM jobs
    WHERE status IN ('failed', 'cancelled') AND status = $1
      AND ($2::text IS NULL OR queue = $2) AND ($3::text IS NULL OR handler = $3)
      AND ($4::text IS NULL OR source = $4)
    LIMIT $5
) found;

-- name: count_ready_jobs
SELECT count(*) FROM (
    SELECT 1 FROM jobs
    WHERE status IN ('pending', 'retrying') AND status = $1
      AND ($2::text IS NULL OR queue = $2) AND ($3::text IS NULL OR handler = $3)
      AND ($4::text IS NULL OR source = $4)
    LIMIT $5
) found;

-- name: count_running_jobs
SELECT count(*) FROM (
    SELECT 1 FROM jobs
    WHERE status = 'running' AND status = $1
      AND ($2::text IS NULL OR queue = $2) AND ($3::text IS NULL OR handler = $3)
      AND ($4::text IS NULL OR source = $4)
    LIMIT $5
) found;

-- name: select_job_ids
-- The operator's bulk actions (jobwire jobs retry|cancel|delete) first freeze the set of
-- ids they act on, a page at a time: find_jobs's family (the same indexes, the same
-- keyset on id), ids only, with more filters: created before $7 / from $8, among the ids
-- $9, and without poison ($10: unroutable, or stored failed before it ever ran, attempts 0).
SELECT id FROM jobs
WHERE ($1::text IS NULL OR status = $1)
  AND ($2::text IS NULL OR queue = $2) AND ($4::bigint IS NULL OR id < $4)
  AND ($5::text IS NULL OR handler = $5) AND ($6::text IS NULL OR source = $6)
  AND ($7::timestamptz IS NULL OR created_at < $7)
  AND ($8::timestamptz IS NULL OR created_at >= $8)
  AND ($9::bigint[] IS NULL OR id = ANY($9::bigint[]))
  AND NOT ($10::bool AND (handler = '(unroutable)' OR (status = 'failed' AND attempts = 0)))
ORDER BY id DESC
LIMIT $3;

-- name: select_failed_job_ids
SELECT id FROM jobs
WHERE status IN ('failed', 'cancelled') AND status = $1
  AND ($2::text IS NULL OR queue = $2) AND ($4::bigint IS NULL OR id < $4)
  AND ($5::text IS NULL OR handler = $5) AND ($6::text IS NULL OR source = $6)
  AND ($7::timestamptz IS NULL OR created_at < $7)
  AND ($8::timestamptz IS NULL OR created_at >= $8)
  AND ($9::bigint[] IS NULL OR id = ANY($9::bigint[]))
  AND NOT ($10::bool AND (handler = '(unroutable)' OR (status = 'failed' AND attempts = 0)))
ORDER BY id DESC
LIMIT $3;

-- name: select_ready_job_ids
SELECT id FROM jobs
WHERE status IN ('pending', 'retrying') AND status = $1
  AND ($2::text IS NULL OR queue = $2) AND ($4::bigint IS NULL OR id < $4)
  AND ($5::text IS NULL OR handler = $5) AND ($6::text IS NULL OR source = $6)
  AND ($7::timestamptz IS NULL OR created_at < $7)
  AND ($8::timestamptz IS NULL OR created_at >= $8)
  AND ($9::bigint[] IS NULL OR id = ANY($9::bigint[]))
  AND NOT ($10::bool AND (handler = '(unroutable)' OR (status = 'failed' AND attempts = 0)))
ORDER BY id DESC
LIMIT $3;

-- name: select_running_job_ids
SELECT id FROM jobs
WHERE status = 'running' AND status = $1
  AND ($2::text IS NULL OR queue = $2) AND ($4::bigint IS NULL OR id < $4)
  AND ($5::text IS NULL OR handler = $5) AND ($6::text IS NULL OR source = $6)
  AND ($7::timestamptz IS NULL OR created_at < $7)
  AND ($8::timestamptz IS NULL OR created_at >= $8)
  AND ($9::bigint[] IS NULL OR id = ANY($9::bigint[]))
  AND NOT ($10::bool AND (handler = '(unroutable)' OR (status = 'failed' AND attempts = 0)))
ORDER BY id DESC
LIMIT $3;

-- name: jobs_by_ids
SELECT * FROM jobs WHERE id = ANY($1::bigint[]) ORDER BY id DESC;

-- name: retry_job_ids
-- retry_jobs for a frozen set of ids: only those still failed or cancelled (a job that
-- changed state since it was selected is skipped), never poison unless $3.
UPDATE jobs SET status = 'pending', max_attempts = attempts + $2, run_at = now(),
                finished_at = NULL, cancel_requested = false, result = NULL
WHERE id = ANY($1::bigint[]) AND status IN ('failed', 'cancelled')
  AND ($3::bool OR NOT (handler = '(unroutable)' OR (status = 'failed' AND attempts = 0)))
RETURNING id;

-- name: cancel_job_ids
-- cancel_job for a frozen set of ids: waiting ones are cancelled, running ones flagged;
-- finished ones are left alone (and not returned).
UPDATE jobs SET
    status = CASE WHEN status IN ('pending', 'retrying') THEN 'cancelled' ELSE status END,
    finished_at = CASE WHEN status IN ('pending', 'retrying') THEN now() ELSE finished_at END,
    cancel_requested = (status = 'running') OR cancel_requested
WHERE id = ANY($1::bigint[]) AND status IN ('pending', 'retrying', 'running')
RETURNING id, status;

-- name: delete_job_ids
-- Finished jobs only (never a running or waiting one); their job_runs go by cascade and
-- their children keep running with parent_id cleared (ON DELETE SET NULL).
DELETE FROM jobs
WHERE id = ANY($1::bigint[]) AND status IN ('succeeded', 'failed', 'cancelled')
RETURNING id;

-- name: failed_since
-- Failed in the last $1 seconds, per queue, up to a cap ($2): through jobs_failed, so the
-- cost follows the failed jobs kept, never the succeeded history.
SELECT queue, count(*) AS n FROM (
    SELECT queue FROM jobs
    WHERE status IN ('failed', 'cancelled') AND status = 'failed'
      AND finished_at > now() - make_interval(secs => $1)
    LIMIT $2
) recent
GROUP BY queue;

-- name: insert_audit
INSERT INTO audit (actor, role, action, target, count, detail)
VALUES ($1, $2, $3, $4, $5, $6::jsonb)
RETURNING id;

-- name: list_audit
SELECT * FROM audit WHERE ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $1;

-- name: job_runs
SELECT * FROM job_runs WHERE job_id = $1 ORDER BY attempt, id;

-- name: count_by_queue_and_status
-- Every row, history included: its cost grows with the retained history (bench/history.py).
-- For an operator's explicit question (jobwire stats), not for scrapes.
SELECT queue, status, count(*) AS n FROM jobs GROUP BY queue, status ORDER BY queue, status;

-- name: count_live_by_queue_and_status
-- Pending, retrying and running jobs only, each read through its partial index (the
-- predicates match jobs_ready's and jobs_running's exactly), so the cost follows the live
-- jobs, not the history (bench/history.py times both counts). Metrics read this at every
-- refresh.
SELECT queue, status, count(*) AS n FROM jobs
WHERE status IN ('pending', 'retrying') GROUP BY queue, status
UNION ALL
SELECT queue, 'running', count(*) FROM jobs WHERE status = 'running' GROUP BY queue;

-- name: register_worker
INSERT INTO workers (id, host, pid, version) VALUES ($1, $2, $3, $4)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now();

-- name: heartbeat_worker
UPDATE workers SET heartbeat_at = now(), state = $2::jsonb WHERE id = $1;

-- name: list_workers
SELECT id, host, pid, version, started_at, heartbeat_at,
       extract(epoch FROM now() - heartbeat_at) AS heartbeat_age, state
FROM workers ORDER BY started_at;

-- name: unregister_worker
DELETE FROM workers WHERE id = $1;

-- name: notify
SELECT pg_notify($1, $2);

-- name: upsert_schedule
-- Config wins. A schedule whose timing did not change keeps its next_run_at, so ticks
-- missed while every instance was down are still found (and handled by catch_up).
INSERT INTO schedules (name, cron, interval_s, timezone, handler, payload, queue, priority,
                       max_attempts, enabled, start_at, end_at, max_runs, catch_up, next_run_at)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11, $12, $13, $14, $15)
ON CONFLICT (name) DO UPDATE SET
    cron = EXCLUDED.cron, interval_s = EXCLUDED.interval_s, timezone = EXCLUDED.timezone,
    handler = EXCLUDED.handler, payload = EXCLUDED.payload, queue = EXCLUDED.queue,
    priority = EXCLUDED.priority, max_attempts = EXCLUDED.max_attempts,
    enabled = EXCLUDED.enabled, start_at = EXCLUDED.start_at, end_at = EXCLUDED.end_at,
    max_runs = EXCLUDED.max_runs, catch_up = EXCLUDED.catch_up,
    next_run_at = CASE
        WHEN schedules.next_run_at IS NOT NULL
         AND schedules.cron IS NOT DISTINCT FROM EXCLUDED.cron
         AND schedules.interval_s IS NOT DISTINCT FROM EXCLUDED.interval_s
         AND schedules.timezone = EXCLUDED.timezone
         AND schedules.start_at IS NOT DISTINCT FROM EXCLUDED.start_at
        THEN schedules.next_run_at ELSE EXCLUDED.next_run_at END;

-- name: disable_unlisted_schedules
-- Removed from the config: disabled, not deleted (their history stays).
UPDATE schedules SET enabled = false WHERE enabled AND NOT (name = ANY($1::text[]));

-- name: due_schedules
SELECT * FROM schedules WHERE enabled AND next_run_at <= now() ORDER BY next_run_at;

-- name: schedule_fired
-- Optimistic: only the leader that read next_run_at = $5 may move it on.
UPDATE schedules SET last_run_at = coalesce($2, last_run_at), next_run_at = $3,
                     run_count = run_count + $4,
                     enabled = enabled AND (max_runs IS NULL OR run_count + $4 < max_runs)
WHERE name = $1 AND next_run_at = $5
RETURNING name;

-- name: list_schedules
SELECT * FROM schedules ORDER BY name;

-- name: get_schedule
SELECT * FROM schedules WHERE name = $1;

-- name: set_schedule_enabled
UPDATE schedules SET enabled = $2 WHERE name = $1 RETURNING name;

-- name: try_advisory_lock
SELECT pg_try_advisory_lock(hashtext($1));

-- name: purge_plan
-- The purge's transaction only: a plan that sorts becomes the planner's last resort, so
-- purge_finished reads jobs_finished in its order (see there).
SET LOCAL enable_sort = off;

-- name: purge_finished
-- One small batch of finished jobs older than $1 seconds, oldest first; their job_runs go
-- by cascade. Read in the order of the jobs_finished index (migration 0004), the scan stops
-- at the batch or at the cutoff, whatever the planner's statistics say. Left to them, it
-- chose badly both ways: expecting many old rows (statistics from before the last purge),
-- a sequential scan, so the run's last batch, which comes back short, read the whole table;
-- expecting few (never analysed), every old row fetched and sorted. bench/purge.py times
-- the three. The rows
-- are then deleted by "id = ANY": primary-key lookups, where a join let a small table be
-- hashed whole.
DELETE FROM jobs WHERE id = ANY (ARRAY(
    SELECT id FROM jobs
    WHERE status IN ('succeeded', 'failed', 'cancelled')
      AND finished_at < now() - make_interval(secs => $1)
    ORDER BY finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- name: ready_backlog
-- Ready jobs, counted up to a cap: flow control needs "more than N", never the exact size.
SELECT count(*) FROM (
    SELECT 1 FROM jobs WHERE status IN ('pending', 'retrying') AND run_at <= now() LIMIT $1
) ready;

-- name: oldest_ready
-- Seconds since the oldest ready job of each queue ($1) became ready, NULL when none is.
-- Per queue, through jobs_ready (its predicate matches): the queue's live rows only, never
-- the history. That index is ordered by priority, not run_at, so min() reads all of them;
-- the live set is small, and metrics read this at most once a second.
SELECT w.queue, extract(epoch FROM now() - r.oldest)::float8 AS age
FROM unnest($1::text[]) AS w(queue) CROSS JOIN LATERAL (
    SELECT min(run_at) AS oldest FROM jobs
    WHERE queue = w.queue AND status IN ('pending', 'retrying') AND run_at <= now()
) r;

-- name: stored_offsets
SELECT o.topic, o.partition, o.next_offset
FROM kafka_offsets o
JOIN unnest($2::text[], $3::int[]) AS w(topic, partition)
  ON w.topic = o.topic AND w.partition = o.partition
WHERE o.group_id = $1;

-- name: ping
SELECT 1;

-- name: advisory_lock
-- Waits for the lock: one migrator per schema at a time.
SELECT pg_advisory_lock(hashtext($1));

-- name: advisory_unlock
SELECT pg_advisory_unlock(hashtext($1));

-- name: schema_exists
-- The schema check of every command but migrate: reads, creates nothing.
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1);

-- name: schema_migrations_exists
SELECT EXISTS (SELECT 1 FROM pg_tables
               WHERE schemaname = $1 AND tablename = 'schema_migrations');

-- name: applied_migrations
-- A template, as create_schema: the schema may not be on the connection's search_path.
SELECT version, name, applied_at FROM {schema}.schema_migrations ORDER BY version;

-- name: create_schema
-- A template: DDL takes no parameters, so migrate() puts in the quoted identifier.
CREATE SCHEMA IF NOT EXISTS {schema};

-- name: use_schema
-- A template, as create_schema: the migrations name no schema.
SET search_path TO {schema};

-- name: create_schema_migrations
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: record_migration
INSERT INTO schema_migrations (version, name) VALUES ($1, $2);

-- name: default_max_attempts
-- The attempts of a job that sets none itself, as the daemon last published them.
SELECT default_max_attempts();

-- name: publish_default_max_attempts
-- Written by the daemon at start-up from retry.max_attempts; unchanged values write nothing.
INSERT INTO settings (key, value) VALUES ('default_max_attempts', $1::integer::text)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
WHERE settings.value IS DISTINCT FROM EXCLUDED.value;

-- name: enqueue_on_connection
-- A template ({schema}: the quoted identifier): the Client on an application's own asyncpg
-- connection, whose search_path is its own, inside the application's transaction.
SELECT {schema}.enqueue($1, $2::text::jsonb, queue => $3, priority => $4,
                        delay => make_interval(secs => $5::float8), dedup_key => $6,
                        max_attempts => $7, headers => $8::text::jsonb, source => 'api');

-- name: insert_jobs_on_connection
-- A template, as enqueue_on_connection: the Client's batch on an application's connection.
-- Jobs that set no max_attempts get the published default, as with enqueue(). ORDER BY ord
-- keeps identity values ascending in input order, which the caller relies on.
INSERT INTO {schema}.jobs (handler, queue, priority, max_attempts, run_at, payload, body,
                           content_type, headers, source, dedup_key, parent_id)
SELECT j.handler, j.queue, j.priority, coalesce(j.max_attempts, {schema}.default_max_attempts()),
       now() + make_interval(secs => j.delay), j.payload::jsonb, j.body, j.content_type,
       coalesce(j.headers::jsonb, jsonb_build_object()), j.source, j.dedup_key, j.parent_id
FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::float8[], $6::text[], $7::bytea[],
            $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[])
     WITH ORDINALITY AS j(handler, queue, priority, max_attempts, delay, payload, body,
                          content_type, headers, source, dedup_key, parent_id, ord)
ORDER BY j.ord
ON CONFLICT (dedup_key) DO NOTHING
RETURNING id, dedup_key;

-- name: enqueue_dbapi
-- A template, as enqueue_on_connection, for jobwire.pg_sync: DB-API drivers (psycopg 3,
-- psycopg2) take %s placeholders. Typed casts, so a None is a NULL of the right type.
SELECT {schema}.enqueue(%s, %s::text::jsonb, queue => %s, priority => %s,
                        run_at => %s::timestamptz, delay => make_interval(secs => %s::float8),
                        dedup_key => %s::text, max_attempts => %s::integer,
                        headers => %s::text::jsonb, source => 'api');
