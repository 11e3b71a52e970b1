-- jobwire schema, version 1. Runs with search_path set to the configured schema.

CREATE TABLE jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue            text        NOT NULL DEFAULT 'default',
    handler          text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'retrying', 'succeeded', 'failed', 'cancelled')),
    priority         integer     NOT NULL DEFAULT 0,
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    run_at           timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,
    worker_id        text,
    payload          jsonb,
    body             bytea,
    content_type     text,
    headers          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    source           text,
    dedup_key        text UNIQUE,
    result           jsonb,
    last_error       text,
    progress         smallint CHECK (progress BETWEEN 0 AND 100),
    progress_note    text,
    parent_id        bigint REFERENCES jobs (id) ON DELETE SET NULL,
    schedule_id      bigint,
    cancel_requested boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);

-- The claim reads only ready rows: a small partial index, in claim order.
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, id) WHERE status IN ('pending', 'retrying');
-- Lease recovery looks only at running rows. Not keyed by worker_id on purpose: a partial
-- index keeps entries of finished row versions until vacuum, and the completion UPDATE
-- would then scan every job this worker ever ran instead of looking rows up by id.
CREATE INDEX jobs_running ON jobs (lease_until) WHERE status = 'running';

-- A queue table is rewritten constantly: vacuum it early and often, so dead row versions
-- do not pile up in the claim index between autovacuum runs.
ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0.01,
                      autovacuum_vacuum_insert_scale_factor = 0.01,
                      autovacuum_analyze_scale_factor = 0.02,
                      autovacuum_vacuum_cost_delay = 0);
-- Deliberately no index on status or finished_at: every index is written again on each of a
-- job's three row versions (insert, start, finish), and that write cost is the throughput.

CREATE TABLE job_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      bigint      NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     integer     NOT NULL,
    worker_id   text        NOT NULL,
    -- Written once, when the attempt ends: a running attempt is visible in jobs itself.
    status      text        NOT NULL
                CHECK (status IN ('succeeded', 'failed', 'retrying', 'cancelled', 'lost', 'interrupted')),
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    duration    double precision,
    error       text,
    result      jsonb
);
CREATE INDEX job_runs_job ON job_runs (job_id, attempt);

CREATE TABLE schedules (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    cron        text,
    interval_s  double precision,
    timezone    text        NOT NULL DEFAULT 'UTC',
    handler     text        NOT NULL,
    payload     jsonb,
    queue       text        NOT NULL DEFAULT 'default',
    priority    integer     NOT NULL DEFAULT 0,
    max_attempts integer,
    enabled     boolean     NOT NULL DEFAULT true,
    start_at    timestamptz,
    end_at      timestamptz,
    max_runs    integer,
    run_count   integer     NOT NULL DEFAULT 0,
    last_run_at timestamptz,
    next_run_at timestamptz,
    catch_up    text        NOT NULL DEFAULT 'latest' CHECK (catch_up IN ('none', 'latest', 'all')),
    CHECK ((cron IS NULL) <> (interval_s IS NULL))
);

CREATE TABLE workers (
    id           text PRIMARY KEY,
    host         text        NOT NULL,
    pid          integer     NOT NULL,
    version      text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    state        jsonb       NOT NULL DEFAULT '{}'::jsonb
);

-- Any insert, by jobwire or by another program's plain SQL, wakes the pools at once.
-- One notification per statement, not per row: a batch of 500 rows costs one NOTIFY.
CREATE FUNCTION notify_jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobwire_' || TG_TABLE_SCHEMA, 'jobs');
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION notify_jobs_inserted();
