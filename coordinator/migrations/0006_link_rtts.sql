-- Round trips a replica's relay measured over its mesh links to other
-- regions ([{region, rtt_ms}]), reported with each heartbeat: the dashboard's
-- expected round trip through each region.
--
-- A table of its own, not a column of region_replicas: the previous release
-- reads region_replicas with `SELECT *` in prepared statements, and a new
-- column changes their result type ("cached plan must not change result
-- type"), which its replicas would fail on mid-upgrade.
CREATE TABLE replica_link_rtts (
    replica_id  uuid PRIMARY KEY REFERENCES region_replicas (id) ON DELETE CASCADE,
    link_rtts   jsonb NOT NULL,
    measured_at timestamptz NOT NULL DEFAULT now()
);
