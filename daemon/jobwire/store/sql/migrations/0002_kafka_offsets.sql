-- Kafka consumer positions, written in the same transaction as the job rows they produced:
-- a crash at any point leaves jobs and offsets agreeing, so nothing is lost or read twice.
CREATE TABLE kafka_offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
