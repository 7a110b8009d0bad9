-- The connection log: one row per session a region served (an app visited
-- until idle, a WebSocket, a TCP, SSH or terminal stream) or refused. Regions
-- choose each record's `id`, so a batch they send again is stored once; `seq`
-- is the order the coordinator stored them in, and pages newest first by it.
-- No foreign keys: a record outlives the user, region and workspace it names.
-- Expand-only (a new table): the previous release does not notice it.
CREATE TABLE connection_log (
    seq bigserial PRIMARY KEY,
    id uuid NOT NULL UNIQUE,
    -- The region that served it (from its proxy token, never from the record)
    -- and the replica (from the record).
    region text NOT NULL,
    replica_id uuid NOT NULL,
    -- app, websocket, tcp, ssh, terminal.
    kind text NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at timestamptz NOT NULL,
    -- Who: by id and by name when stored (none: anonymous, or refused unknown).
    user_id uuid,
    username text,
    -- Whose workspace, which one, which agent; the app slug, port, `ssh` or `terminal`.
    owner text NOT NULL,
    workspace text NOT NULL,
    agent text,
    agent_id uuid,
    target text NOT NULL,
    -- The client as the region saw it.
    client_addr text,
    user_agent text,
    bytes_up bigint NOT NULL,
    bytes_down bigint NOT NULL,
    requests bigint NOT NULL,
    -- {"1xx": n, "2xx": n, ...}
    statuses jsonb NOT NULL DEFAULT '{}',
    -- idle, closed, client_gone, agent_gone, timeout, refused, region_stopped, region_killed.
    ending text NOT NULL,
    reason text,
    stored_at timestamptz NOT NULL DEFAULT now()
);
-- Each filter has its index ending in `seq DESC` (a page is an index range);
-- `started_at` serves time ranges and retention.
CREATE INDEX connection_log_started ON connection_log (started_at);
CREATE INDEX connection_log_user ON connection_log (username, seq DESC);
CREATE INDEX connection_log_workspace ON connection_log (owner, workspace, seq DESC);
CREATE INDEX connection_log_region ON connection_log (region, seq DESC);
CREATE INDEX connection_log_kind ON connection_log (kind, seq DESC);
CREATE INDEX connection_log_refused ON connection_log (seq DESC) WHERE ending = 'refused';
