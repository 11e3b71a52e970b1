-- Per-job options, through every way in: an attempt timeout of the job's own, a concurrency
-- key, and how long a dedup key stays taken.

-- 0007 (flow controls) adds concurrency_key first; repeated here so this file stands alone.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS concurrency_key text;

-- Seconds one attempt may run; NULL: the queue's timeout, if it has one.
ALTER TABLE jobs ADD COLUMN timeout double precision;
-- 'forever': the dedup key stays taken until retention deletes the row (what broker
-- redelivery dedup needs). 'active': the key is let go when the job finishes (succeeded,
-- failed, cancelled; not while it retries), so the same key can be enqueued again.
-- A constant default: adding the column rewrites nothing.
ALTER TABLE jobs ADD COLUMN unique_mode text NOT NULL DEFAULT 'forever';
-- The key an 'active' job let go, kept for operators: dedup_key itself must be NULL, so the
-- unique constraint (and every ON CONFLICT (dedup_key) inferring it) stays as it is.
ALTER TABLE jobs ADD COLUMN released_key text;
-- NOT VALID: enforced for every new and updated row without scanning the existing ones
-- (all of which are NULL and 'forever' anyway). "timeout > 0" alone lets NaN through (NaN
-- sorts above every number in PostgreSQL, Infinity too), and asyncio.timeout(nan) fires at
-- once: both are refused by name.
ALTER TABLE jobs ADD CONSTRAINT jobs_timeout_positive
    CHECK (timeout > 0 AND timeout < 'Infinity' AND timeout <> 'NaN') NOT VALID;
ALTER TABLE jobs ADD CONSTRAINT jobs_unique_mode CHECK (unique_mode IN ('forever', 'active'))
    NOT VALID;

-- A trigger, not each statement that finishes a job: completion, cancel (admin, bulk),
-- lease recovery, a stop that finds a cancel request and an operator's own UPDATE all end
-- jobs, and every one of them must let the key go. The WHEN test runs without calling the
-- function, so 'forever' jobs (nearly all) pay one comparison per status change. A
-- re-enqueue racing with the completion waits on the row's key until the completion
-- commits, then inserts a new job (the old row version no longer holds the key).
-- A retried job (jobwire jobs retry) does not take its key back: another job may hold it.
CREATE FUNCTION release_active_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.released_key := NEW.dedup_key;
    NEW.dedup_key := NULL;
    RETURN NEW;
END $$;

CREATE TRIGGER jobs_release_active_key BEFORE UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (NEW.unique_mode = 'active' AND NEW.dedup_key IS NOT NULL
          AND NEW.status IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION release_active_key();

DROP FUNCTION enqueue(text, jsonb, text, integer, timestamptz, interval, text, integer, jsonb,
                      text);

-- Returns the new job's id, or for a dedup_key already taken the existing job's id. Only
-- handler and payload are positional; the rest are named: queue => 'mail', delay => '10m',
-- timeout => '30s', unique_mode => 'active' ("unique" is a reserved word in SQL: a
-- parameter of that name could only be passed quoted). run_at and delay together mean
-- run_at + delay.
CREATE FUNCTION enqueue(
    handler         text,
    payload         jsonb,
    queue           text        DEFAULT 'default',
    priority        integer     DEFAULT 0,
    run_at          timestamptz DEFAULT NULL,
    delay           interval    DEFAULT NULL,
    dedup_key       text        DEFAULT NULL,
    max_attempts    integer     DEFAULT NULL,
    headers         jsonb       DEFAULT '{}',
    source          text        DEFAULT 'sql',
    timeout         interval    DEFAULT NULL,
    concurrency_key text        DEFAULT NULL,
    unique_mode     text        DEFAULT 'forever'
) RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
    AS $$
#variable_conflict use_column
DECLARE
    new_id bigint;
BEGIN
    -- A clear error for what the column checks would refuse less clearly.
    IF enqueue.timeout IS NOT NULL AND enqueue.timeout <= interval '0' THEN
        RAISE EXCEPTION 'jobwire.enqueue: timeout must be positive, not %', enqueue.timeout
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(enqueue.unique_mode, 'forever') NOT IN ('forever', 'active') THEN
        RAISE EXCEPTION 'jobwire.enqueue: unique_mode must be forever or active, not %',
            enqueue.unique_mode USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Twice at most: the job holding the key may finish and let it go (unique_mode active)
    -- between the INSERT that met it and the SELECT that looks for it; the key is then free.
    FOR attempt IN 1..2 LOOP
        INSERT INTO jobs (handler, payload, queue, priority, run_at, dedup_key, max_attempts,
                          headers, source, timeout, concurrency_key, unique_mode)
        VALUES (enqueue.handler, enqueue.payload, coalesce(enqueue.queue, 'default'),
                coalesce(enqueue.priority, 0),
                coalesce(enqueue.run_at, now()) + coalesce(enqueue.delay, interval '0'),
                enqueue.dedup_key, coalesce(enqueue.max_attempts, default_max_attempts()),
                coalesce(enqueue.headers, '{}'), enqueue.source,
                extract(epoch FROM enqueue.timeout)::double precision,
                enqueue.concurrency_key, coalesce(enqueue.unique_mode, 'forever'))
        ON CONFLICT (dedup_key) DO NOTHING
        RETURNING id INTO new_id;
        IF new_id IS NULL THEN
            -- A statement of its own, so in READ COMMITTED it sees a row another
            -- transaction committed while this INSERT waited on its key.
            SELECT id INTO new_id FROM jobs WHERE dedup_key = enqueue.dedup_key;
        END IF;
        EXIT WHEN new_id IS NOT NULL;
    END LOOP;
    RETURN new_id;
END $$;
ALTER FUNCTION enqueue(text, jsonb, text, integer, timestamptz, interval, text, integer, jsonb,
                       text, interval, text, text) SET search_path FROM CURRENT;
