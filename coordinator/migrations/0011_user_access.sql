-- How each user stands: suspended (every session ended, every token refused
-- in every region), when their sessions were last revoked, last sign-in. A
-- table of its own, not columns of `users`: the previous release reads
-- `users` with `u.*` (see README.md), and a user without a row here is
-- active. Expand-only (new tables).
CREATE TABLE user_access (
    user_id             uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    suspended_at        timestamptz,
    sessions_revoked_at timestamptz,
    last_sign_in_at     timestamptz,
    -- A change of what regions must refuse gets the next route version and a
    -- NOTIFY on `meridian_routes`: regions follow it with the route feed
    -- (`proxies/me/routes`), so a suspension reaches them as fast as an
    -- agent's move, in version order with route changes (same sequence,
    -- same advisory lock as migration 0004).
    version             bigint NOT NULL DEFAULT 0
);
CREATE INDEX user_access_version ON user_access (version);

CREATE FUNCTION user_access_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' AND (NEW.suspended_at IS NOT NULL OR NEW.sessions_revoked_at IS NOT NULL)
       OR TG_OP = 'UPDATE' AND (NEW.suspended_at IS DISTINCT FROM OLD.suspended_at
                                OR NEW.sessions_revoked_at IS DISTINCT FROM OLD.sessions_revoked_at) THEN
        PERFORM pg_advisory_xact_lock(7285001);
        NEW.version := nextval('agent_route_version');
        PERFORM pg_notify('meridian_routes', NEW.version::text);
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER user_access_changed BEFORE INSERT OR UPDATE ON user_access
    FOR EACH ROW EXECUTE FUNCTION user_access_changed();

-- Sign-in sessions ended by a revocation (one, all of a user's, or a
-- suspension): regions refuse every token minted from them (the `sid`
-- claim) and cut what those opened. Kept while such a token could still be
-- served: a token is minted only while its session lives, so a day past the
-- session's own expiry covers its lifetime and any offline grace.
CREATE TABLE revoked_sessions (
    session_id uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    revoked_at timestamptz NOT NULL DEFAULT now(),
    forget_at  timestamptz NOT NULL
);
CREATE INDEX revoked_sessions_user ON revoked_sessions (user_id, forget_at);
CREATE INDEX revoked_sessions_forget_at ON revoked_sessions (forget_at);
