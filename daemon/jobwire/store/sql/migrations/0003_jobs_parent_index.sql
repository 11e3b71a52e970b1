-- Deleting a job makes PostgreSQL clear parent_id in its children (ON DELETE SET NULL), by
-- a lookup on parent_id for every deleted row. Without an index that lookup was a scan of
-- the whole table: the retention purge of 1,000 finished jobs took 5 s in a table of
-- 50,000 and 20 s in one of 200,000 (measured as bench/purge.py does), so in a table of
-- 30 days of jobs it could not keep up. Partial: only child jobs have a parent, so the
-- index stays small and no other row version ever writes to it. Built once, at the
-- upgrade, with a scan of the table (writes wait for it; 0.1 s for 1,000,000 small rows).
CREATE INDEX jobs_parent ON jobs (parent_id) WHERE parent_id IS NOT NULL;
