-- Reply-to: a source with reply: true stores the request's reply address in the job row;
-- when the job reaches a final state, one outbox row (n = 0: message id jobwire-<id>-0)
-- carries its result or error to that address, written in the same transaction as the
-- status change, so a reply is never lost to a crash nor sent for an unfinished job.
--
-- jobs.reply: {"output": "reply:<source>", "to": "<reply_to queue or response topic>",
-- "correlation": "<AMQP correlation_id, or MQTT 5 correlation data as base64>"}, and
-- "replied": true once its outbox row was written (an operator's retry of a job that
-- already replied sends no second reply: the requester had its answer).

-- A constant default (NULL): adding the column rewrites nothing.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS reply jsonb;

-- The triggers below write the reply row in the transaction of the status change: a reply
-- written by hand without an output (or not an object) would make that insert fail, and
-- with it the whole completion batch of unrelated jobs. Refused here instead, where the
-- statement that wrote it fails alone. NOT VALID: every row is NULL so far, and a check of
-- the existing rows would scan the whole table under this migration's lock.
-- (A missing key makes jsonb_typeof NULL, which a CHECK would let pass: hence coalesce.)
ALTER TABLE jobs ADD CONSTRAINT jobs_reply_address CHECK (
    reply IS NULL OR coalesce(jsonb_typeof(reply) = 'object'
                              AND jsonb_typeof(reply->'output') = 'string'
                              AND jsonb_typeof(reply->'to') = 'string', false)) NOT VALID;

-- The outbox row of a finished job's reply: its result as JSON when it succeeded, else
-- {"error": ..., "status": ...}; headers jobwire-status, content-type and (for the
-- publisher, which moves it into the protocol's property) jobwire-correlation.
CREATE FUNCTION jobs_reply_write(job jobs) RETURNS void LANGUAGE sql AS $$
    INSERT INTO outbox (output, job_id, n, key, headers, body)
    VALUES (
        job.reply->>'output', job.id, 0, job.reply->>'to',
        jsonb_strip_nulls(jsonb_build_object(
            'jobwire-status', job.status,
            'content-type', 'application/json',
            'jobwire-correlation', job.reply->>'correlation')),
        convert_to(
            CASE WHEN job.status = 'succeeded' THEN coalesce(job.result, 'null'::jsonb)
                 ELSE jsonb_build_object('error', coalesce(job.last_error, job.status),
                                         'status', job.status)
            END::text,
            'UTF8'))
$$;

ALTER FUNCTION jobs_reply_write(jobs) SET search_path FROM CURRENT;

-- A status change into a final state: written in a BEFORE trigger so that it can mark the
-- row replied in the same update. It is named to run after the other BEFORE UPDATE triggers
-- (they fire in name order), so it sees the row as it will be stored; none of them skips
-- the update, and the row is already locked when it runs, so the update does happen.
CREATE FUNCTION jobs_reply_on_finish() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM jobs_reply_write(NEW);
    NEW.reply := NEW.reply || '{"replied": true}';
    RETURN NEW;
END $$;

ALTER FUNCTION jobs_reply_on_finish() SET search_path FROM CURRENT;

-- Ordinary jobs (reply NULL) pay one comparison per status change.
CREATE TRIGGER jobs_reply_on_finish BEFORE UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (NEW.reply IS NOT NULL AND NEW.status IN ('succeeded', 'failed', 'cancelled')
          AND OLD.status IS DISTINCT FROM NEW.status AND NOT (NEW.reply ? 'replied'))
    EXECUTE FUNCTION jobs_reply_on_finish();

-- A job inserted already finished (a message that could not become a runnable job is
-- stored failed): the requester waits for an answer all the same. Marked before the insert
-- and written after it: a BEFORE INSERT trigger also fires for a row that ON CONFLICT then
-- skips (a redelivered message's duplicate), which must write nothing.
CREATE FUNCTION jobs_reply_mark() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.reply := NEW.reply || '{"replied": true}';
    RETURN NEW;
END $$;

ALTER FUNCTION jobs_reply_mark() SET search_path FROM CURRENT;

CREATE FUNCTION jobs_reply_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM jobs_reply_write(NEW);
    RETURN NULL;
END $$;

ALTER FUNCTION jobs_reply_on_insert() SET search_path FROM CURRENT;

-- Named after jobs_after_on_insert, which may insert a job failed (a failed dependency).
CREATE TRIGGER jobs_reply_mark BEFORE INSERT ON jobs
    FOR EACH ROW
    WHEN (NEW.reply IS NOT NULL AND NEW.status IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION jobs_reply_mark();

CREATE TRIGGER jobs_reply_on_insert AFTER INSERT ON jobs
    FOR EACH ROW
    WHEN (NEW.reply IS NOT NULL AND NEW.status IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION jobs_reply_on_insert();
