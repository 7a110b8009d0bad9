-- Users, their sessions, regions and the replicas that serve them.
-- Secrets are never stored: sessions and proxy tokens keep a SHA-256 of their
-- random secret, users an Argon2id hash of their password.

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    username      text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    admin         boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sessions (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    secret_hash bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX sessions_user_id ON sessions (user_id);

-- The primary region (the coordinator itself) has a row with no token.
CREATE TABLE regions (
    id           uuid PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    display_name text NOT NULL,
    token_hash   bytea,
    created_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO regions (id, name, display_name)
VALUES ('00000000-0000-0000-0000-000000000001', 'primary', 'Primary');

-- One row per running proxy replica, written by its heartbeat and by the
-- health checker. Deregistration deletes the row.
CREATE TABLE region_replicas (
    id                uuid PRIMARY KEY,
    region_id         uuid NOT NULL REFERENCES regions (id) ON DELETE CASCADE,
    access_url        text NOT NULL,
    wildcard_hostname text NOT NULL,
    relay_address     text,
    version           text NOT NULL,
    status            text NOT NULL,
    error             text,
    registered_at     timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
    checked_at        timestamptz
);
CREATE INDEX region_replicas_region_id ON region_replicas (region_id);
