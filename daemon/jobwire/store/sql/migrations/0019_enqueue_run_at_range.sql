-- enqueue() refuses a run_at (with its delay) outside the years 1 to 9999: such a job was
-- stored, and then no reader in Python could decode it (Client.get, GET /api/v1/jobs and the
-- dashboard's lists failed with it on the page). Otherwise 0012's function, unchanged; the
-- signature is the same, so CREATE OR REPLACE keeps its grants.

CREATE OR REPLACE FUNCTION enqueue(
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
    unique_mode     text        DEFAULT 'forever',
    after           bigint[]    DEFAULT NULL
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
    -- Python's datetime holds years 1 to 9999 (a day inside them: a reader's time zone may
    -- move a time by up to one). A job outside them was stored, and then every reader in
    -- Python (Client.get, GET /api/v1/jobs, the dashboard's lists) failed on it.
    -- 'infinity' and '-infinity' read back (as datetime.max and min) and stay allowed.
    IF isfinite(coalesce(enqueue.run_at, now()) + coalesce(enqueue.delay, interval '0'))
       AND coalesce(enqueue.run_at, now()) + coalesce(enqueue.delay, interval '0')
           NOT BETWEEN timestamptz '0001-01-02 00:00+00' AND timestamptz '9999-12-30 00:00+00'
    THEN
        RAISE EXCEPTION 'jobwire.enqueue: run_at (plus delay) must fall within the years 1 to '
            '9999, not %', coalesce(enqueue.run_at, now()) + coalesce(enqueue.delay, interval '0')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(enqueue.after) > 1000 THEN
        RAISE EXCEPTION 'jobwire.enqueue: after takes at most 1000 ids, not %',
            cardinality(enqueue.after) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Twice at most: the job holding the key may finish and let it go (unique_mode active)
    -- between the INSERT that met it and the SELECT that looks for it; the key is then free.
    FOR attempt IN 1..2 LOOP
        INSERT INTO jobs (handler, payload, queue, priority, run_at, dedup_key, max_attempts,
                          headers, source, timeout, concurrency_key, unique_mode, after_ids)
        VALUES (enqueue.handler, enqueue.payload, coalesce(enqueue.queue, 'default'),
                coalesce(enqueue.priority, 0),
                coalesce(enqueue.run_at, now()) + coalesce(enqueue.delay, interval '0'),
                enqueue.dedup_key, coalesce(enqueue.max_attempts, default_max_attempts()),
                coalesce(enqueue.headers, '{}'), enqueue.source,
                extract(epoch FROM enqueue.timeout)::double precision,
                enqueue.concurrency_key, coalesce(enqueue.unique_mode, 'forever'),
                enqueue.after)
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
                       text, interval, text, text, bigint[]) SET search_path FROM CURRENT;
