-- Routes: where each agent's tunnel is attached, pushed to proxies.
--
-- Every change of an agent's attachment gets the next `route_version` and a
-- NOTIFY on `meridian_routes`, so a proxy holding version V asks for the rows
-- above V, and every coordinator replica wakes its waiting proxies. The
-- advisory lock makes versions commit in order: a reader never sees V+1
-- before V has committed.

ALTER TABLE agents ADD COLUMN replica_id uuid;
ALTER TABLE agents ADD COLUMN route_version bigint NOT NULL DEFAULT 0;
CREATE SEQUENCE agent_route_version;
CREATE INDEX agents_route_version ON agents (route_version);

CREATE FUNCTION agents_route_changed() RETURNS trigger AS $$
BEGIN
    IF NEW.region_id IS DISTINCT FROM OLD.region_id
       OR NEW.replica_id IS DISTINCT FROM OLD.replica_id
       OR NEW.connected IS DISTINCT FROM OLD.connected THEN
        PERFORM pg_advisory_xact_lock(7285001);
        NEW.route_version := nextval('agent_route_version');
        PERFORM pg_notify('meridian_routes', NEW.route_version::text);
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER agents_route_changed BEFORE UPDATE ON agents
    FOR EACH ROW EXECUTE FUNCTION agents_route_changed();

-- When a replica's status last changed, so agents can wait until their
-- preferred region has been healthy for a while before moving back.
ALTER TABLE region_replicas ADD COLUMN status_since timestamptz NOT NULL DEFAULT now();

-- Where peer relays link in, when a replica sets it apart from where agents
-- attach (a private backbone address, or the demo's simulated-latency link).
ALTER TABLE region_replicas ADD COLUMN mesh_address text;
