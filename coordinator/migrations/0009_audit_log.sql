-- The audit log: one row per state change made through the API (users,
-- regions, workspaces, sign-in and sign-out), with who, from where, what, and
-- the fields that changed (before and after; never a secret). No foreign keys:
-- a record outlives the user, region or workspace it names. Expand-only (a
-- new table): the previous release does not notice it.
CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    -- Who acted: a user (by id and by name at the time); for a failed
    -- sign-in, the name that was tried and no id.
    actor_id uuid,
    actor text,
    -- What happened, as `<kind>.<verb>`: user.create, user.login, ...
    action text NOT NULL,
    -- What it happened to: its kind (user, region, workspace) and name
    -- (`owner/name` for a workspace).
    target_kind text NOT NULL,
    target text NOT NULL,
    -- The client's address as the coordinator saw it.
    source text,
    -- {"field": [before, after]} for the fields that changed.
    changes jsonb NOT NULL DEFAULT '{}'
);
-- Pages are newest first by id (ids grow in the order records are written;
-- the primary key serves the unfiltered list); each filter has its index,
-- and `at` serves time ranges and retention.
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor, id DESC);
CREATE INDEX audit_log_target ON audit_log (target, id DESC);
CREATE INDEX audit_log_action ON audit_log (action text_pattern_ops, id DESC);
