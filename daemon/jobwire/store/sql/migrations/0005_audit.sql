-- What operators did through the dashboard (retry, cancel, sign-in): who, when, to what.
-- Written once per action, never updated; read newest first by id (its primary key), so no
-- other index is needed. actor says which session acted (role and client address), role
-- which token it signed in with.
CREATE TABLE audit (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    actor  text        NOT NULL,
    role   text        NOT NULL,
    action text        NOT NULL,
    target text,
    count  integer     NOT NULL DEFAULT 0,
    detail jsonb       NOT NULL DEFAULT '{}'::jsonb
);
