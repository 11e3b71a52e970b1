-- Reply rows without a key. 0013 wrote each reply row keyed by its address, and the relay
-- keeps a key's rows in order: it claims no row of a key that has one in flight, and counts
-- a key's later rows failed once an earlier one failed. So every reply to one address (the
-- usual case: one reply queue or response topic per requester) went out one batch at a
-- time, and a failed reply had the confirmed replies after it sent again (duplicates).
-- Replies have no order among themselves: each carries its request's correlation, and a
-- requester matches it by that. The address now travels in the header jobwire-reply-to,
-- which the publisher sends to (and does not send as a header); an unkeyed row waits only
-- for the rows of its own job, and a reply is the only row of its job in its output.
-- A relay of a build with 0013 but not this one reads the address from the key, and would
-- send an unkeyed reply nowhere: as for 0014, stop every instance that runs outputs first.
CREATE OR REPLACE FUNCTION jobs_reply_write(job jobs) RETURNS void LANGUAGE sql AS $$
    INSERT INTO outbox (output, job_id, n, key, headers, body)
    VALUES (
        job.reply->>'output', job.id, 0, NULL,
        jsonb_strip_nulls(jsonb_build_object(
            'jobwire-status', job.status,
            'content-type', 'application/json',
            'jobwire-reply-to', job.reply->>'to',
            'jobwire-correlation', job.reply->>'correlation')),
        convert_to(
            CASE WHEN job.status = 'succeeded' THEN coalesce(job.result, 'null'::jsonb)
                 ELSE jsonb_build_object('error', coalesce(job.last_error, job.status),
                                         'status', job.status)
            END::text,
            'UTF8'))
$$;

-- CREATE OR REPLACE resets the function's settings: set again.
ALTER FUNCTION jobs_reply_write(jobs) SET search_path FROM CURRENT;

-- Reply rows written keyed and not sent yet go the same way (a header the row already
-- has wins, as it does in the publisher). Through the outbox_unsent index: only unsent rows.
UPDATE outbox
SET headers = jsonb_build_object('jobwire-reply-to', key) || headers, key = NULL
WHERE output LIKE 'reply:%' AND n = 0 AND key IS NOT NULL
  AND sent_at IS NULL AND failed_at IS NULL;
