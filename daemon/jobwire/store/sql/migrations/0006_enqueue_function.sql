-- Applications enqueue inside their own transaction: SELECT jobwire.enqueue('email', '{...}')
-- next to their own writes, and the job exists exactly when those writes commit. The insert
-- trigger of 0001 queues the wake-up NOTIFY, which PostgreSQL delivers only at commit.

-- Settings the daemon publishes for every way in. default_max_attempts: the attempts of a job
-- that sets none itself; the daemon writes its retry.max_attempts here at start-up, so raw
-- SQL, this function and the Client agree with the config instead of each having its own.
CREATE TABLE settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO settings (key, value) VALUES ('default_max_attempts', '5');

CREATE FUNCTION default_max_attempts() RETURNS integer
    LANGUAGE sql STABLE SECURITY INVOKER
    AS $$ SELECT coalesce((SELECT value::integer FROM settings
                           WHERE key = 'default_max_attempts'), 5) $$;
-- The migration runs with search_path set to jobwire's schema (whatever it is named): pin it,
-- so the function finds its table from any caller's search_path.
ALTER FUNCTION default_max_attempts() SET search_path FROM CURRENT;

-- A column default is evaluated only when an INSERT leaves the column out: a plain
-- INSERT INTO jobs (handler, payload) gets the configured attempts, and the intake, which
-- always passes max_attempts, pays nothing for it.
ALTER TABLE jobs ALTER COLUMN max_attempts SET DEFAULT default_max_attempts();

-- Returns the new job's id, or for a dedup_key already taken the existing job's id. Only
-- handler and payload are positional; the rest are named: queue => 'mail', delay => '10m'.
-- run_at and delay together mean run_at + delay. No timeout: jobs have no timeout column.
CREATE FUNCTION enqueue(
    handler      text,
    payload      jsonb,
    queue        text        DEFAULT 'default',
    priority     integer     DEFAULT 0,
    run_at       timestamptz DEFAULT NULL,
    delay        interval    DEFAULT NULL,
    dedup_key    text        DEFAULT NULL,
    max_attempts integer     DEFAULT NULL,
    headers      jsonb       DEFAULT '{}',
    source       text        DEFAULT 'sql'
) RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
    AS $$
#variable_conflict use_column
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO jobs (handler, payload, queue, priority, run_at, dedup_key, max_attempts,
                      headers, source)
    VALUES (enqueue.handler, enqueue.payload, coalesce(enqueue.queue, 'default'),
            coalesce(enqueue.priority, 0),
            coalesce(enqueue.run_at, now()) + coalesce(enqueue.delay, interval '0'),
            enqueue.dedup_key, coalesce(enqueue.max_attempts, default_max_attempts()),
            coalesce(enqueue.headers, '{}'), enqueue.source)
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING id INTO new_id;
    IF new_id IS NULL THEN
        -- A statement of its own, so in READ COMMITTED it sees a row another transaction
        -- committed while this INSERT waited on its key.
        SELECT id INTO new_id FROM jobs WHERE dedup_key = enqueue.dedup_key;
    END IF;
    RETURN new_id;
END $$;
ALTER FUNCTION enqueue(text, jsonb, text, integer, timestamptz, interval, text, integer, jsonb,
                       text) SET search_path FROM CURRENT;
