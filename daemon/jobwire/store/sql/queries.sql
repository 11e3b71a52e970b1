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
-- $21-$23: the per-job options (timeout seconds, concurrency key, unique mode; NULL unique
-- mode: 'forever'). $24: the ids each job waits for, comma-separated (NULL: none; a NULL
-- array when no job of the batch has any, so broker batches pay nothing). $25: each job's
-- reply address as JSON text (a source with reply: true; a NULL array likewise).
-- $26-$36: the value of a column whose rows all hold the same one, sent once with a NULL
-- array in that column's place (a broker batch shares its handler, queue, source, priority
-- and most else). asyncpg checks and encodes every array element one by one, so a value
-- repeated per row costs the client far more than sending it once.
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
                  attempts, worker_id, lease_until, started_at, timeout, concurrency_key,
                  unique_mode, after_ids, reply)
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
       CASE WHEN j.run_now AND j.failed_reason IS NULL THEN now() END,
       j.timeout, j.concurrency_key, coalesce(j.unique_mode, 'forever'),
       string_to_array(j.after_ids, ',')::bigint[], j.reply::jsonb
FROM (
    SELECT coalesce(u.handler, $26::text) AS handler, coalesce(u.queue, $27::text) AS queue,
           coalesce(u.priority, $28::int) AS priority,
           coalesce(u.max_attempts, $29::int) AS max_attempts,
           coalesce(u.delay, $30::float8) AS delay, u.payload, coalesce(u.body, $31::bytea) AS body,
           coalesce(u.content_type, $32::text) AS content_type, u.headers,
           coalesce(u.source, $33::text) AS source, u.dedup_key,
           coalesce(u.parent_id, $34::bigint) AS parent_id,
           coalesce(u.failed_reason, $35::text) AS failed_reason,
           coalesce(u.run_now, $36::bool) AS run_now, u.timeout, u.concurrency_key, u.unique_mode,
           u.after_ids, u.reply, u.ord
    FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::float8[], $6::text[],
                $7::bytea[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[],
                $13::text[], $16::bool[], $21::float8[], $22::text[], $23::text[], $24::text[],
                $25::text[])
         WITH ORDINALITY AS u(handler, queue, priority, max_attempts, delay, payload, body,
                              content_type, headers, source, dedup_key, parent_id, failed_reason,
                              run_now, timeout, concurrency_key, unique_mode, after_ids, reply, ord)
) AS j
ORDER BY j.ord
ON CONFLICT (dedup_key) DO NOTHING
RETURNING id, dedup_key;

-- name: ids_by_dedup_key
SELECT id, dedup_key FROM jobs WHERE dedup_key = ANY($1::text[]);

-- name: claim_jobs
-- Take up to $3 ready jobs, at most n per queue, highest priority first, then FIFO.
-- SKIP LOCKED lets any number of pools claim side by side without waiting on each other.
-- Keyed jobs and jobs of rate-limited handlers ($6) are never taken here: only the flow
-- claim (claim_flow_jobs, under the flow lock) may start them.
-- A paused queue is left out here too, not only by the pool: the pool knows of a pause from
-- a NOTIFY, a moment after it answered, and in a drain its claims started jobs of a queue
-- after `jobwire queues pause` had returned (a drill: 8 in 20 pauses at 12,000 jobs/s).
WITH wanted AS (
    SELECT w.queue, w.n FROM unnest($1::text[], $2::int[]) AS w(queue, n)
    WHERE NOT EXISTS (SELECT 1 FROM queue_state s WHERE s.queue = w.queue AND s.paused)
), candidates AS (
    SELECT c.id, c.priority
    FROM wanted w CROSS JOIN LATERAL (
        SELECT id, priority FROM jobs
        WHERE queue = w.queue AND status IN ('pending', 'retrying') AND run_at <= now()
          AND concurrency_key IS NULL AND handler <> ALL($6::text[])
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
-- own SQL in a profile. run_at and created_at are held to the years Python's datetime has:
-- an application's SQL may store '-infinity', a BC date or year 20000, and one such value
-- failed the decoding of the whole batch, its other jobs left running until their leases
-- ran out (and for good with created_at, which nothing rewrites).
RETURNING jobs.id, jobs.handler, jobs.queue, jobs.priority, jobs.attempts, jobs.max_attempts,
          jobs.payload, greatest(jobs.run_at, '0001-01-01 00:00+00'),
          least(greatest(jobs.created_at, '0001-01-01 00:00+00'), '9999-12-31 23:59:59+00'),
          jobs.body, jobs.content_type,
          jobs.headers, jobs.source, jobs.dedup_key, jobs.worker_id, jobs.started_at,
          jobs.parent_id, jobs.lease_until, jobs.timeout, jobs.concurrency_key;

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
-- exactly while a job runs, so "worker_id = $8" says running. $10-$14: the value every
-- row of attempt, status, result, error and retry delay holds when the batch shares one
-- (that array then NULL), as insert_jobs' $26-$36.
WITH held AS (
    SELECT p.id, p.i, coalesce(($2::int[])[p.i], $10::int) AS attempt,
           coalesce(($3::text[])[p.i], $11::text) AS status, ($4::float8[])[p.i] AS duration,
           coalesce(($5::text[])[p.i], $12::text)::jsonb AS result,
           coalesce(($6::text[])[p.i], $13::text) AS error,
           coalesce(($7::float8[])[p.i], $14::float8) AS retry_in
    FROM (SELECT id, ($9::jsonb ->> id::text)::int AS i
          FROM jobs WHERE id = ANY($1::bigint[]) AND worker_id = $8) AS p
), done AS (
    UPDATE jobs j SET status = h.status, result = h.result, last_error = h.error,
                      run_at = CASE WHEN h.status = 'retrying'
                                    THEN now() + make_interval(secs => h.retry_in)
                                    ELSE j.run_at END,
                      finished_at = CASE WHEN h.status IN ('succeeded', 'failed', 'cancelled')
                                         THEN now() END,
                      progress = CASE WHEN h.status = 'succeeded' THEN 100 ELSE j.progress END,
                      lease_until = NULL, worker_id = NULL
    FROM held h
    WHERE j.id = h.id AND j.attempts = h.attempt
    RETURNING j.id, j.started_at, h.attempt, h.status, h.duration, h.error, h.result
), runs AS (
    INSERT INTO job_runs (job_id, attempt, worker_id, status, started_at, finished_at, duration,
                          error, result)
    SELECT done.id, done.attempt, $8, done.status, coalesce(done.started_at, now()), now(),
           done.duration, done.error, done.result
    FROM done
)
SELECT count(*) FROM done;

-- name: renew_leases
-- One statement renews the leases of the jobs this worker is running ($3) and reports
-- cancel requests. Only those: a job it gave up on (its lease could not be renewed in
-- time) must be left to expire, or it would stay "running" here forever. An id asked for
-- but not returned is no longer this worker's (its lease was recovered, perhaps another
-- worker runs it now): the worker stops its copy and writes no outcome.
-- A row someone else holds locked (an operator's SELECT ... FOR UPDATE) is skipped and
-- reported locked, still this worker's: waiting on it held up every other job's renewal, and
-- a lock held past the lease cost every long job of the instance its lease (found by a drill).
WITH mine AS (
    SELECT id FROM jobs WHERE id = ANY($3::bigint[]) AND worker_id = $1
    FOR UPDATE SKIP LOCKED
), renewed AS (
    UPDATE jobs SET lease_until = now() + make_interval(secs => $2)
    FROM mine WHERE jobs.id = mine.id
    RETURNING jobs.id, jobs.cancel_requested
)
SELECT id, cancel_requested, false AS locked FROM renewed
UNION ALL
SELECT id, false, true FROM jobs
WHERE id = ANY($3::bigint[]) AND worker_id = $1 AND id NOT IN (SELECT id FROM mine);

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
-- Run failed or cancelled jobs again, with a fresh allowance of attempts: these ids, and
-- every job of status $2.
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
-- changed state since it was selected is skipped), never poison unless $3. Also the retry of
-- named jobs (the dashboard's and the API's, $3 true): retry_jobs's generic plan, which the
-- server settles on after five runs, read every failed job kept for its "OR status = $2"
-- even with $2 NULL, a single retry's cost growing with them (a drill: 58 ms at 10,000).
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
-- Finished jobs only (never a running or waiting one); their job_runs go with them (0018) and
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
INSERT INTO workers (id, host, pid, version, state) VALUES ($1, $2, $3, $4, $5::jsonb)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), state = EXCLUDED.state;

-- name: heartbeat_worker
UPDATE workers SET heartbeat_at = now(), state = $2::jsonb WHERE id = $1;

-- name: list_workers
SELECT id, host, pid, version, started_at, heartbeat_at,
       extract(epoch FROM now() - heartbeat_at) AS heartbeat_age, state
FROM workers ORDER BY started_at;

-- name: unregister_worker
DELETE FROM workers WHERE id = $1;

-- name: other_workers
SELECT state FROM workers WHERE id <> $1 AND heartbeat_at > now() - make_interval(secs => $2);

-- name: notify
SELECT pg_notify($1, $2);

-- name: upsert_schedule
-- Config wins. A schedule whose timing did not change keeps its next_run_at, so ticks
-- missed while every instance was down are still found (and handled by catch_up). A
-- run-time schedule of the same name becomes the config's (origin 'config').
INSERT INTO schedules (name, cron, interval_s, timezone, handler, payload, queue, priority,
                       max_attempts, enabled, start_at, end_at, max_runs, catch_up, next_run_at)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11, $12, $13, $14, $15)
ON CONFLICT (name) DO UPDATE SET
    cron = EXCLUDED.cron, interval_s = EXCLUDED.interval_s, timezone = EXCLUDED.timezone,
    handler = EXCLUDED.handler, payload = EXCLUDED.payload, queue = EXCLUDED.queue,
    priority = EXCLUDED.priority, max_attempts = EXCLUDED.max_attempts,
    enabled = EXCLUDED.enabled, start_at = EXCLUDED.start_at, end_at = EXCLUDED.end_at,
    max_runs = EXCLUDED.max_runs, catch_up = EXCLUDED.catch_up, origin = 'config',
    next_run_at = CASE
        WHEN schedules.next_run_at IS NOT NULL
         AND schedules.cron IS NOT DISTINCT FROM EXCLUDED.cron
         AND schedules.interval_s IS NOT DISTINCT FROM EXCLUDED.interval_s
         AND schedules.timezone = EXCLUDED.timezone
         AND schedules.start_at IS NOT DISTINCT FROM EXCLUDED.start_at
        THEN schedules.next_run_at ELSE EXCLUDED.next_run_at END;

-- name: disable_unlisted_schedules
-- Removed from the config: disabled, not deleted (their history stays). Run-time
-- schedules (origin 'api') are not the config's to disable.
UPDATE schedules SET enabled = false
WHERE enabled AND origin = 'config' AND NOT (name = ANY($1::text[]));

-- name: due_schedules
SELECT * FROM schedules WHERE enabled AND next_run_at <= now() ORDER BY next_run_at;

-- name: fire_idle_timeout
-- fire_schedule's transaction only: a leader that stalls inside it (frozen, paused) loses
-- it after as long as a frozen leader keeps its lock (leadership.LOCK_IDLE_TIMEOUT).
SET LOCAL idle_in_transaction_session_timeout = '10s';

-- name: schedule_fired
-- Optimistic: only the leader that read next_run_at = $5 may move it on, and only while
-- the schedule is still enabled: one paused after the leader read it fired once more,
-- after `schedules pause` had answered.
UPDATE schedules SET last_run_at = coalesce($2, last_run_at), next_run_at = $3,
                     run_count = run_count + $4,
                     enabled = enabled AND (max_runs IS NULL OR run_count + $4 < max_runs)
WHERE name = $1 AND next_run_at = $5 AND enabled
RETURNING name;

-- name: list_schedules
SELECT * FROM schedules ORDER BY name;

-- name: get_schedule
SELECT * FROM schedules WHERE name = $1;

-- name: set_schedule_enabled
UPDATE schedules SET enabled = $2 WHERE name = $1 RETURNING name;

-- name: try_advisory_lock
SELECT pg_try_advisory_lock(hashtext($1));

-- name: lead_idle_timeout
-- The leader's lock connection only: the server ends it (and so the lock) when the holder
-- has not pinged for this long. See PgSchedules.try_leadership.
SELECT set_config('idle_session_timeout', $1, false);

-- name: purge_plan
-- The purge's transaction only: a plan that sorts becomes the planner's last resort, so
-- purge_finished reads jobs_finished in its order (see there).
SET LOCAL enable_sort = off;

-- name: purge_finished
-- One small batch of finished jobs older than $1 seconds, oldest first; their job_runs go
-- with them (0018). Read in the order of the jobs_finished index (migration 0004), the scan stops
-- at the batch or at the cutoff, whatever the planner's statistics say. Left to them, it
-- chose badly both ways: expecting many old rows (statistics from before the last purge),
-- a sequential scan, so the run's last batch, which comes back short, read the whole table;
-- expecting few (never analysed), every old row fetched and sorted. bench/purge.py times
-- the three. The rows
-- are then deleted by "id = ANY": primary-key lookups, where a join let a small table be
-- hashed whole.
-- Each batch reads on from the last one's newest finished_at ($3, returned as "last"; NULL
-- for a run's first): while any transaction older than the purge is open, the entries of the
-- rows it deleted cannot be marked dead, and a scan from the oldest entry read them all again,
-- a batch's cost growing with the rows purged before it (a drill: 1,000,000 rows in 38 s, the
-- last batches 50-80 ms, against 10 s). ">=", not ">": a completion batch shares one
-- finished_at, and the last batch may have taken part of it.
WITH gone AS (
    DELETE FROM jobs WHERE id = ANY (ARRAY(
        SELECT id FROM jobs
        WHERE status IN ('succeeded', 'failed', 'cancelled')
          AND finished_at < now() - make_interval(secs => $1)
          AND finished_at >= coalesce($3::timestamptz, '-infinity')
        ORDER BY finished_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING finished_at
)
SELECT count(*) AS n, max(finished_at) AS last FROM gone;

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
-- A job waits from run_at, or from its insert when an application gave an earlier run_at
-- (a backdated job is not years late); '-infinity' cannot be subtracted from now().
SELECT w.queue, extract(epoch FROM now() - r.oldest)::float8 AS age
FROM unnest($1::text[]) AS w(queue) CROSS JOIN LATERAL (
    SELECT min(greatest(run_at, created_at, '0001-01-01 00:00+00')) AS oldest FROM jobs
    WHERE queue = w.queue AND status IN ('pending', 'retrying') AND run_at <= now()
) r;

-- name: oldest_ready_elsewhere
-- Seconds since the oldest ready job of any queue but these ($1) became ready, NULL when
-- none is: the queues metrics fold into "_other" (metrics_queues.py). Reads jobs_ready's
-- live rows, as oldest_ready does, and only while some queue is folded.
SELECT extract(epoch FROM now() - min(greatest(run_at, created_at, '0001-01-01 00:00+00')))::float8
FROM jobs
WHERE status IN ('pending', 'retrying') AND run_at <= now() AND queue <> ALL ($1::text[]);

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

-- name: check_client_connection
-- The migrating session only: see migrate._end_with_client.
SET client_connection_check_interval = '1s';

-- name: advisory_lock_holders
-- The server pids of the sessions holding advisory_lock's lock ($1), for the message of a
-- migrator that waits for another (a one-bigint lock is classid, objid: see lead_lock_held).
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 1
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND (classid::bigint << 32) | objid::bigint = hashtext($1)::bigint
ORDER BY pid;

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

-- name: schema_owner
-- Whether this role may act as the owner of schema $1 (a superuser may act as any role).
SELECT pg_get_userbyid(nspowner) AS owner, current_user AS me,
       pg_has_role(nspowner, 'MEMBER') AS member
FROM pg_namespace WHERE nspname = $1;

-- name: set_role
-- A template, as create_schema: the migrations then create as the schema's owner.
SET ROLE {role};

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
                        max_attempts => $7, headers => $8::text::jsonb, source => 'api',
                        timeout => make_interval(secs => $9::float8), concurrency_key => $10,
                        unique_mode => $11, after => $12::bigint[]);

-- name: insert_jobs_on_connection
-- A template, as enqueue_on_connection: the Client's batch on an application's connection.
-- Jobs that set no max_attempts get the published default, as with enqueue(). ORDER BY ord
-- keeps identity values ascending in input order, which the caller relies on.
INSERT INTO {schema}.jobs (handler, queue, priority, max_attempts, run_at, payload, body,
                           content_type, headers, source, dedup_key, parent_id, timeout,
                           concurrency_key, unique_mode, after_ids)
SELECT j.handler, j.queue, j.priority, coalesce(j.max_attempts, {schema}.default_max_attempts()),
       now() + make_interval(secs => j.delay), j.payload::jsonb, j.body, j.content_type,
       coalesce(j.headers::jsonb, jsonb_build_object()), j.source, j.dedup_key, j.parent_id,
       j.timeout, j.concurrency_key, coalesce(j.unique_mode, 'forever'),
       string_to_array(j.after_ids, ',')::bigint[]
FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::float8[], $6::text[], $7::bytea[],
            $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[], $13::float8[],
            $14::text[], $15::text[], $16::text[])
     WITH ORDINALITY AS j(handler, queue, priority, max_attempts, delay, payload, body,
                          content_type, headers, source, dedup_key, parent_id, timeout,
                          concurrency_key, unique_mode, after_ids, ord)
ORDER BY j.ord
ON CONFLICT (dedup_key) DO NOTHING
RETURNING id, dedup_key;

-- name: enqueue_dbapi
-- A template, as enqueue_on_connection, for jobwire.pg_sync: DB-API drivers (psycopg 3,
-- psycopg2) take %s placeholders. Typed casts, so a None is a NULL of the right type.
SELECT {schema}.enqueue(%s, %s::text::jsonb, queue => %s, priority => %s,
                        run_at => %s::timestamptz, delay => make_interval(secs => %s::float8),
                        dedup_key => %s::text, max_attempts => %s::integer,
                        headers => %s::text::jsonb, source => 'api',
                        timeout => make_interval(secs => %s::float8),
                        concurrency_key => %s::text, unique_mode => %s::text,
                        after => %s::bigint[]);

-- name: sched_insert_jobs
-- A schedule's jobs (its ticks, or one "run now"), linked to it by schedule_id. Scheduled
-- jobs take the column defaults for everything a schedule does not set.
INSERT INTO jobs (handler, queue, priority, max_attempts, payload, source, dedup_key,
                  schedule_id)
SELECT j.handler, j.queue, j.priority, coalesce(j.max_attempts, default_max_attempts()),
       j.payload::jsonb, j.source, j.dedup_key, j.schedule_id
FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::text[], $6::text[], $7::text[],
            $8::bigint[])
     WITH ORDINALITY AS j(handler, queue, priority, max_attempts, payload, source, dedup_key,
                          schedule_id, ord)
ORDER BY j.ord
ON CONFLICT (dedup_key) DO NOTHING
RETURNING id;

-- name: sched_add_schedule
-- A run-time schedule; a name already taken (by the config or at run time) adds nothing.
INSERT INTO schedules (name, cron, interval_s, timezone, handler, payload, queue, priority,
                       max_attempts, enabled, start_at, end_at, max_runs, catch_up, next_run_at,
                       origin)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11, $12, $13, $14, $15, 'api')
ON CONFLICT (name) DO NOTHING
RETURNING *;

-- name: sched_update_schedule
-- Only run-time schedules change here (the config file owns its own). As at sync, a
-- schedule whose timing did not change keeps its next tick; runs so far are kept.
UPDATE schedules SET
    cron = $2, interval_s = $3, timezone = $4, handler = $5, payload = $6::jsonb, queue = $7,
    priority = $8, max_attempts = $9, enabled = $10, start_at = $11, end_at = $12,
    max_runs = $13, catch_up = $14,
    next_run_at = CASE
        WHEN next_run_at IS NOT NULL
         AND cron IS NOT DISTINCT FROM $2 AND interval_s IS NOT DISTINCT FROM $3
         AND timezone = $4 AND start_at IS NOT DISTINCT FROM $11
         AND end_at IS NOT DISTINCT FROM $12
        THEN next_run_at ELSE $15 END
WHERE name = $1 AND origin = 'api'
RETURNING *;

-- name: sched_delete_schedule
-- Its jobs stay, with their schedule_id (no foreign key: history outlives schedules).
DELETE FROM schedules WHERE name = $1 AND origin = 'api' RETURNING id;

-- name: sched_last_jobs
-- Each schedule's newest job, through jobs_schedule_id_idx (one index probe a schedule).
SELECT s.id AS schedule_id, j.id, j.status
FROM schedules s
CROSS JOIN LATERAL (SELECT id, status FROM jobs WHERE schedule_id = s.id
                    ORDER BY id DESC LIMIT 1) j;

-- name: dash_failure_groups
-- The failures page: failed jobs grouped by fingerprint (migration 0010), the biggest group
-- first. Reads jobs_failed_fingerprint alone, in its order (no sort before the grouping).
SELECT error_fingerprint AS fingerprint, count(*) AS n,
       min(finished_at) AS first_seen, max(finished_at) AS last_seen,
       array_agg(DISTINCT handler) AS handlers, array_agg(DISTINCT queue) AS queues,
       max(id) AS sample_id
FROM jobs
WHERE status = 'failed'
GROUP BY error_fingerprint
ORDER BY count(*) DESC, max(id) DESC
LIMIT $1;

-- name: dash_failed_ids_by_fingerprint
-- One failure group's ids, newest first, a page at a time (keyset on id).
SELECT id FROM jobs
WHERE status = 'failed' AND error_fingerprint = $1 AND ($3::bigint IS NULL OR id < $3)
ORDER BY id DESC
LIMIT $2;

-- name: dash_finished_before
-- Of a frozen set, the ids whose last finish is no later than the freeze: a job that ran
-- and failed again since is left alone by the bulk action.
SELECT id FROM jobs WHERE id = ANY($1::bigint[]) AND finished_at <= $2;

-- name: dash_throughput
SELECT minute, queue, status, n FROM throughput_minutes WHERE minute >= $1 ORDER BY minute;

-- name: dash_rollup_bounds
-- The minutes the next rollup adds: from the one after the last written (at most an hour
-- back) to the last whole minute, a few seconds after it ended (no completion in flight).
SELECT greatest(max(minute) + interval '1 minute',
                date_trunc('minute', now()) - interval '1 hour') AS lo,
       date_trunc('minute', now() - interval '5 seconds') AS hi
FROM throughput_minutes;

-- name: dash_rollup_throughput
-- Finished jobs per minute, queue and status, for the minutes in [$1, $2) (whole minutes),
-- through jobs_finished: each run reads only the jobs finished since the last one.
INSERT INTO throughput_minutes (minute, queue, status, n)
SELECT date_trunc('minute', finished_at), queue, status, count(*)::int
FROM jobs
WHERE finished_at >= $1 AND finished_at < $2
GROUP BY 1, 2, 3
ON CONFLICT (minute, queue, status) DO UPDATE SET n = EXCLUDED.n;

-- name: dash_rollup_forget
DELETE FROM throughput_minutes WHERE minute < $1;

-- name: flow_lock
-- Every flow claim (keyed jobs, rate limits) of every instance takes this lock for its
-- transaction, so each reads the running counts and token buckets its predecessor left:
-- under READ COMMITTED the claim that follows takes its snapshot after the lock is granted.
-- One lock per schema: two jobwire schemas in one database do not wait on each other.
-- Tried, never waited for: an instance stalled while holding it (a long GC pause, a cut
-- network) must not stop every other one's claims; a claim that finds it taken skips its
-- flow part and tries again shortly (PgFlow._claim_flow).
SELECT pg_try_advisory_xact_lock(hashtext('jobwire.flow_claim:' || current_schema()));

-- name: flow_read_buckets
-- The token buckets $1 as the last flow claim left them, with the seconds since.
SELECT name, tokens,
       greatest(0, extract(epoch FROM clock_timestamp() - updated_at))::float8 AS elapsed
FROM rate_buckets WHERE name = ANY($1::text[]);

-- name: flow_write_buckets
-- The buckets after this claim spent from them. Stamped now: the moments since they were
-- read are not refilled, which errs on the slow side.
INSERT INTO rate_buckets (name, tokens, updated_at)
SELECT b.name, b.tokens, clock_timestamp()
FROM unnest($1::text[], $2::float8[]) AS b(name, tokens)
ON CONFLICT (name) DO UPDATE SET tokens = EXCLUDED.tokens, updated_at = EXCLUDED.updated_at;

-- name: claim_flow_jobs
-- The flow claim, run under flow_lock: up to $3 ready jobs, at most n per queue, within
-- each queue's key limit ($6; id order per key when $7), and at most $10 of each handler
-- $9 (what its token bucket allows; the handlers $12 with none left are kept out). $8: the queue's
-- plain jobs are the fast claim's, take only keyed ones and those of the handlers $11
-- (every rate-limited one). started_at is the clock, not the transaction start, as the
-- buckets count.
--
-- Its cost must not grow with a blocked backlog (a key at its limit with 100,000 jobs
-- waiting, a handler without tokens): running jobs are counted once per key (through
-- jobs_keyed_running), and the backlog is read from three bounded sources:
--   head:   the first n * 4 + 64 ready rows of each queue, in claim order (priority, then
--           FIFO); the usual case finds everything here, in the right order.
--   spread: only when the head was cut short and found too little: the keys with room,
--           stepped through jobs_keyed one index descent per key (however long a key's
--           backlog), each key's oldest ready jobs up to its room; key order, not FIFO.
--   plain:  as spread, for the unkeyed jobs past the head (these have no index of their
--           own: it walks the queue, but only when the head and spread left slots empty).
-- The rows are not locked while chosen (locking every row looked at writes each one); the
-- UPDATE takes them only while they still wait, so a job a fast claim of another instance
-- or an operator took meanwhile is left out, never run twice.
WITH RECURSIVE wanted AS (
    SELECT w.*, w.n * 4 + 64 AS head_size
    FROM unnest($1::text[], $2::int[], $6::int[], $7::bool[], $8::bool[])
        AS w(queue, n, key_limit, ordered, only_special)
    -- A paused queue is left out, as by claim_jobs (see there).
    WHERE NOT EXISTS (SELECT 1 FROM queue_state s WHERE s.queue = w.queue AND s.paused)
), allowed AS (
    SELECT * FROM unnest($9::text[], $10::int[]) AS a(handler, n)
), running AS (
    SELECT r.queue, r.concurrency_key, count(*)::int AS n FROM jobs r
    WHERE r.queue = ANY($1::text[]) AND r.concurrency_key IS NOT NULL AND r.status = 'running'
    GROUP BY r.queue, r.concurrency_key
), head AS (
    SELECT h.*, w.key_limit, w.ordered, w.only_special
    FROM wanted w CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.handler, j.queue, j.concurrency_key FROM jobs j
        WHERE j.queue = w.queue AND j.status IN ('pending', 'retrying') AND j.run_at <= now()
        ORDER BY j.priority DESC, j.id
        LIMIT w.head_size
    ) h
), head_ok AS (
    SELECT h.id, h.priority, h.handler, h.queue, h.concurrency_key, h.key_limit, h.ordered
    FROM head h LEFT JOIN running r
        ON r.queue = h.queue AND r.concurrency_key = h.concurrency_key
    WHERE (NOT h.only_special OR h.concurrency_key IS NOT NULL OR h.handler = ANY($11::text[]))
      AND h.handler <> ALL($12::text[])
      AND (h.concurrency_key IS NULL OR (
            coalesce(r.n, 0) < h.key_limit
            AND (NOT h.ordered OR NOT EXISTS (
                SELECT 1 FROM jobs e
                WHERE e.queue = h.queue AND e.concurrency_key = h.concurrency_key
                  AND e.id < h.id AND e.status IN ('pending', 'retrying')))))
), short AS (
    -- Queues whose head was cut and holds fewer than n startable jobs (one per key counted:
    -- a key's room may be one).
    SELECT w.queue, w.n, w.key_limit, w.ordered, w.only_special FROM wanted w
    WHERE (SELECT count(*) FROM head h WHERE h.queue = w.queue) >= w.head_size
      AND (SELECT count(DISTINCT coalesce(o.concurrency_key, o.id::text)) FROM head_ok o
           WHERE o.queue = w.queue) < w.n
), keys AS (
    SELECT s.queue, s.key_limit, s.ordered,
           (SELECT min(k.concurrency_key) FROM jobs k
            WHERE k.queue = s.queue AND k.concurrency_key IS NOT NULL
              AND k.status IN ('pending', 'retrying')) AS key
    FROM short s
    UNION ALL
    SELECT k0.queue, k0.key_limit, k0.ordered,
           (SELECT min(k.concurrency_key) FROM jobs k
            WHERE k.queue = k0.queue AND k.concurrency_key > k0.key
              AND k.status IN ('pending', 'retrying'))
    FROM keys k0 WHERE k0.key IS NOT NULL
), spread AS (
    -- Lazily: the LIMIT stops the step through the keys once enough jobs are found.
    SELECT t.id, t.priority, t.handler, t.queue, t.concurrency_key, k.key_limit, k.ordered
    FROM keys k LEFT JOIN running r ON r.queue = k.queue AND r.concurrency_key = k.key
    CROSS JOIN LATERAL (
        SELECT f.* FROM (
            SELECT u.*, bool_and(u.ready) OVER (ORDER BY u.id) AS startable FROM (
                SELECT j.id, j.priority, j.handler, j.queue, j.concurrency_key,
                       j.run_at <= now() AND j.handler <> ALL($12::text[])
                           AS ready
                FROM jobs j
                WHERE j.queue = k.queue AND j.concurrency_key = k.key
                  AND j.status IN ('pending', 'retrying')
                  -- Ordered: the oldest waiting ones, startable only as an unbroken prefix.
                  AND (k.ordered OR (j.run_at <= now()
                                     AND j.handler <> ALL($12::text[])))
                ORDER BY j.id
                LIMIT k.key_limit - coalesce(r.n, 0)
            ) u
        ) f WHERE f.startable
    ) t
    WHERE k.key IS NOT NULL AND coalesce(r.n, 0) < k.key_limit
    LIMIT $3
), plain AS (
    SELECT p.id, p.priority, p.handler, p.queue, p.concurrency_key, s.key_limit, s.ordered
    FROM short s CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.handler, j.queue, j.concurrency_key FROM jobs j
        WHERE j.queue = s.queue AND j.status IN ('pending', 'retrying') AND j.run_at <= now()
          AND j.concurrency_key IS NULL AND j.handler <> ALL($12::text[])
          AND (NOT s.only_special OR j.handler = ANY($11::text[]))
        ORDER BY j.priority DESC, j.id
        LIMIT s.n
    ) p
    WHERE (NOT s.only_special OR cardinality($11::text[]) > 0)
      AND (SELECT count(*) FROM spread x WHERE x.queue = s.queue) < s.n
), candidates AS (
    SELECT * FROM head_ok UNION SELECT * FROM spread UNION SELECT * FROM plain
), ranked AS (
    SELECT c.*, coalesce(r.n, 0) AS running,
           -- An ordered key starts in id order whatever the priorities.
           row_number() OVER (PARTITION BY c.queue, c.concurrency_key
                              ORDER BY CASE WHEN c.ordered THEN 0 ELSE -c.priority END, c.id)
               AS key_rank,
           row_number() OVER (PARTITION BY c.handler ORDER BY c.priority DESC, c.id) AS handler_rank
    FROM candidates c LEFT JOIN running r
        ON r.queue = c.queue AND r.concurrency_key = c.concurrency_key
), fitting AS (
    SELECT r.id, r.priority, r.queue,
           row_number() OVER (PARTITION BY r.queue ORDER BY r.priority DESC, r.id) AS queue_rank
    FROM ranked r LEFT JOIN allowed a ON a.handler = r.handler
    WHERE (r.concurrency_key IS NULL OR r.key_rank <= r.key_limit - r.running)
      AND (a.handler IS NULL OR r.handler_rank <= a.n)
), chosen AS (
    SELECT f.id FROM fitting f JOIN wanted w ON w.queue = f.queue
    WHERE f.queue_rank <= w.n
    ORDER BY f.priority DESC, f.id
    LIMIT $3
)
UPDATE jobs SET status = 'running', attempts = jobs.attempts + 1, worker_id = $4,
                lease_until = now() + make_interval(secs => $5), started_at = clock_timestamp(),
                progress = NULL, progress_note = NULL
FROM chosen WHERE jobs.id = chosen.id AND jobs.status IN ('pending', 'retrying')
RETURNING jobs.id, jobs.handler, jobs.queue, jobs.priority, jobs.attempts, jobs.max_attempts,
          jobs.payload, greatest(jobs.run_at, '0001-01-01 00:00+00'),
          least(greatest(jobs.created_at, '0001-01-01 00:00+00'), '9999-12-31 23:59:59+00'),
          jobs.body, jobs.content_type,
          jobs.headers, jobs.source, jobs.dedup_key, jobs.worker_id, jobs.started_at,
          jobs.parent_id, jobs.lease_until, jobs.timeout, jobs.concurrency_key;

-- name: flow_state
-- Every poll: the paused queues; which of the queues $1 have keyed jobs ready (run_at
-- reached: a keyed job due tomorrow sends nothing down the flow path today); and which have
-- jobs of the rate-limited handlers $2 waiting. Not $3 (full): each look reads at most 256
-- rows (keyed ones through jobs_keyed, the others in claim order through jobs_ready), so a
-- queue without such jobs is not read to its end every poll; the pool keeps what it knew
-- until the next full look (every few polls) and may learn of one late.
SELECT queue, 'paused' AS kind FROM queue_state WHERE paused
UNION ALL
SELECT w.queue, 'keyed' FROM unnest($1::text[]) AS w(queue)
WHERE EXISTS (SELECT 1 FROM (
    SELECT run_at FROM jobs
    WHERE queue = w.queue AND concurrency_key IS NOT NULL AND status IN ('pending', 'retrying')
    LIMIT CASE WHEN $3::bool THEN NULL ELSE 256 END) k
    WHERE k.run_at <= now())
UNION ALL
SELECT w.queue, 'limited' FROM unnest($1::text[]) AS w(queue)
WHERE cardinality($2::text[]) > 0
  AND EXISTS (SELECT 1 FROM (
    SELECT handler FROM jobs WHERE queue = w.queue AND status IN ('pending', 'retrying')
    ORDER BY priority DESC, id
    LIMIT CASE WHEN $3::bool THEN NULL ELSE 256 END) r
    WHERE r.handler = ANY($2::text[]));

-- name: flow_set_paused
-- Pause or resume a queue; returns a row only when that changed something. The NOTIFY
-- (delivered at commit) makes every pool re-read flow_state at once instead of at its poll.
WITH changed AS (
    INSERT INTO queue_state (queue, paused, changed_at, changed_by)
    VALUES ($1, $2, now(), $3)
    ON CONFLICT (queue) DO UPDATE
    SET paused = EXCLUDED.paused, changed_at = now(), changed_by = EXCLUDED.changed_by
    WHERE queue_state.paused IS DISTINCT FROM EXCLUDED.paused
    RETURNING queue
)
SELECT queue, pg_notify($4, 'controls') FROM changed;

-- name: flow_queue_states
SELECT queue, paused, changed_at, changed_by FROM queue_state ORDER BY queue;

-- name: outbox_write_effects
-- A successful attempt's effects, in its completion transaction, BEFORE complete_jobs: it
-- locks the rows of the attempts this worker still holds ($1 ids, $2 attempts, $3 worker),
-- so complete_jobs then finishes exactly these, and writes outbox rows and child jobs only
-- for them: an attempt whose lease was lost publishes nothing. Rows are inserted in call
-- order (ordinality), so a job's messages get ids in n order. $2 is a JSON object of job
-- id -> attempt, one lookup per row, as complete_jobs' $9 (array_position() scanned the id
-- array for every row: a cost growing with the square of the batch). $18: each child's
-- after ids, comma-separated (the child may wait for the parent itself: the completion
-- that follows, in the same transaction, wakes it).
WITH held AS (
    SELECT j.id FROM jobs j
    WHERE j.id = ANY($1::bigint[]) AND j.worker_id = $3
      AND j.attempts = ($2::jsonb ->> j.id::text)::int
    FOR UPDATE OF j
), messages AS (
    INSERT INTO outbox (output, job_id, n, key, headers, body)
    SELECT m.output, m.job_id, m.n, m.key, m.headers::jsonb, m.body
    FROM unnest($4::bigint[], $5::text[], $6::int[], $7::text[], $8::text[], $9::bytea[])
         WITH ORDINALITY AS m(job_id, output, n, key, headers, body, ord)
    WHERE m.job_id IN (SELECT id FROM held)
    ORDER BY m.ord
    RETURNING 1
), children AS (
    INSERT INTO jobs (handler, payload, queue, priority, run_at, dedup_key, max_attempts,
                      source, parent_id, after_ids)
    SELECT c.handler, c.payload::jsonb, c.queue, c.priority,
           now() + make_interval(secs => c.delay), c.dedup_key,
           coalesce(c.max_attempts, default_max_attempts()), 'job', c.parent,
           string_to_array(c.after_ids, ',')::bigint[]
    FROM unnest($10::bigint[], $11::text[], $12::text[], $13::text[], $14::int[],
                $15::float8[], $16::text[], $17::int[], $18::text[])
         WITH ORDINALITY AS c(parent, handler, payload, queue, priority, delay, dedup_key,
                              max_attempts, after_ids, ord)
    WHERE c.parent IN (SELECT id FROM held)
    ORDER BY c.ord
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM held) AS held, (SELECT count(*) FROM messages) AS messages,
       (SELECT count(*) FROM children) AS children;

-- name: outbox_claim
-- A relay's claim in one round trip (migrations 0016 and 0017: the statements and why): the
-- batch before marked sent ($6, out of the relay's leases $7), dead relays' leases expired,
-- then up to $2 unsent rows of output $1 leased for $3 seconds from ($4, $5) on, in claim
-- order; the first row also carries where the next claim resumes and the new lease's id.
SELECT * FROM outbox_claim($1, $2, $3, $4, $5, $6::bigint[], $7::bigint[]);

-- name: outbox_unlease
-- Take rows $1 out of the leases that name them ($2, or any when NULL) and return those
-- rows (migration 0016); the caller settles them next, in its transaction.
SELECT id FROM outbox_unlease($1::bigint[], $2::bigint[]) AS id;

-- name: outbox_mark_sent
-- Rows $1 confirmed by the broker: out of leases $2 (NULL: any), then marked sent.
SELECT outbox_mark_sent($1::bigint[], $2::bigint[]);

-- name: outbox_release
-- Rows a relay could not send through no fault of theirs (the batch ahead failed, the relay
-- stopped, the store was away): the reason kept; outbox_unlease frees them for the next
-- claim, and no attempt is counted, so only a row's own failures count towards setting it
-- aside.
UPDATE outbox SET last_error = $2
WHERE id = ANY($1::bigint[]) AND sent_at IS NULL;

-- name: outbox_pending
-- Unsent rows per output (those set aside included: they wait for an operator) and the age
-- of the oldest the relay still tries (metrics, stats).
SELECT output, count(*) AS pending,
       extract(epoch FROM now() - min(created_at) FILTER (WHERE failed_at IS NULL))::float8
           AS oldest,
       count(*) FILTER (WHERE failed_at IS NOT NULL) AS set_aside
FROM outbox WHERE sent_at IS NULL GROUP BY output;

-- name: outbox_set_aside
-- Messages a relay set aside ($1: of one output, or NULL for all), newest first, a page of
-- $2 before id $3. Set-aside rows are few and read only by an operator: no index of their
-- own (outbox_unsent leaves them out), a scan of the unsent rows.
SELECT id, output, job_id, n, key, attempts, last_error, created_at, failed_at,
       octet_length(body) AS size
FROM outbox
WHERE failed_at IS NOT NULL AND sent_at IS NULL
  AND ($1::text IS NULL OR output = $1) AND ($3::bigint IS NULL OR id < $3)
ORDER BY id DESC
LIMIT $2;

-- name: outbox_resend_set_aside
-- Set-aside messages of output $1 (ids $2, or NULL for all) back to the relay: unset aside,
-- attempts from zero, the last error kept until the next try replaces it. The relay's
-- next claim starts from the oldest unsent row, so it finds them.
UPDATE outbox SET failed_at = NULL, attempts = 0
WHERE output = $1 AND failed_at IS NOT NULL AND sent_at IS NULL
  AND ($2::bigint[] IS NULL OR id = ANY($2::bigint[]))
RETURNING id;

-- name: outbox_discard_set_aside
-- Set-aside messages of output $1 (ids $2, or NULL for all) deleted: never sent.
DELETE FROM outbox
WHERE output = $1 AND failed_at IS NOT NULL AND sent_at IS NULL
  AND ($2::bigint[] IS NULL OR id = ANY($2::bigint[]))
RETURNING id;

-- name: outbox_purge_sent
DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox WHERE sent_at < now() - make_interval(secs => $1) LIMIT $2);

-- name: builtins_own_tables
-- jobwire's own tables (the schema of this connection's search_path), for db_maintenance.
SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename;

-- name: builtins_vacuum_analyze
-- {table}: a quoted identifier from builtins_own_tables. VACUUM cannot run in a transaction
-- block: it is sent alone, outside one. Never FULL: that would lock the table.
VACUUM (ANALYZE) {table};

-- name: builtins_vacuum
VACUUM {table};

-- name: builtins_analyze
ANALYZE {table};

-- name: dash_change_marker
-- Live dashboards: a number that moves whenever jobs are inserted, updated or deleted (the
-- table's activity counters; backends report them within about a second of a commit). One
-- read of the statistics, polled once a second while a dashboard is open; the jobs' own
-- statements pay nothing for it.
SELECT coalesce(n_tup_ins + n_tup_upd + n_tup_del, 0) AS marker
FROM pg_stat_user_tables WHERE relid = 'jobs'::regclass;

-- name: dash_backfill_fingerprints
-- Failed rows kept from before migration 0010 get their fingerprint, a batch at a time
-- (the rollup's leader runs it): NULLs sort last in jobs_failed_fingerprint, so each batch
-- reads its own rows, and once none is left the statement reads one index entry.
UPDATE jobs SET error_fingerprint = error_fingerprint(last_error)
WHERE id IN (SELECT id FROM jobs
             WHERE status = 'failed' AND error_fingerprint IS NULL
             LIMIT $1 FOR UPDATE SKIP LOCKED)
  AND status = 'failed';

-- name: lead_lock_held
-- Whether some session holds the advisory lock try_advisory_lock would take ($1): read
-- through the pool, so a follower asks without opening a connection of its own. A
-- one-bigint advisory lock shows in pg_locks as classid (high half) and objid (low half).
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 1
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND (classid::bigint << 32) | objid::bigint = hashtext($1)::bigint
);

-- name: outbox_fail_rows
-- Rows whose own publish failed ($1): an attempt counted, with the reason, and set aside
-- for good (failed_at) once they used up the output's attempts ($3) or when the broker
-- refused them in a way that can never succeed ($4); outbox_unlease frees the others.
-- Returns the rows set aside.
UPDATE outbox SET attempts = attempts + 1, last_error = $2,
                  failed_at = CASE WHEN attempts + 1 >= $3 OR id = ANY($4::bigint[])
                                   THEN now() END
WHERE id = ANY($1::bigint[]) AND sent_at IS NULL
RETURNING id, failed_at IS NOT NULL AS parked;
