-- App authorization: the token-signing key (private half sealed with the
-- coordinator's secrets key), one-time login tickets, app-scoped sessions.

CREATE TABLE signing_keys (
    id                 text PRIMARY KEY,
    public_key         bytea NOT NULL,
    sealed_private_key bytea NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now()
);

-- 'user' sessions authenticate API calls; 'app' sessions only let a proxy
-- obtain app tokens for the user.
ALTER TABLE sessions ADD COLUMN scope text NOT NULL DEFAULT 'user' CHECK (scope IN ('user', 'app'));

CREATE TABLE app_tickets (
    id            uuid PRIMARY KEY,
    secret_hash   bytea NOT NULL,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    redirect_host text NOT NULL,
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz
);
