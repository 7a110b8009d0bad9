-- Workspaces, their agents (each with a token, stored hashed) and the apps
-- each agent serves. An app's port or URL is as seen from inside the workspace.

CREATE TABLE workspaces (
    id         uuid PRIMARY KEY,
    owner_id   uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (owner_id, name)
);

CREATE TABLE agents (
    id                uuid PRIMARY KEY,
    workspace_id      uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name              text NOT NULL,
    token_hash        bytea NOT NULL,
    -- Where the agent's tunnel is attached, while it is connected.
    region_id         uuid REFERENCES regions (id) ON DELETE SET NULL,
    connected         boolean NOT NULL DEFAULT false,
    last_connected_at timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, name)
);

CREATE TABLE apps (
    id        uuid PRIMARY KEY,
    agent_id  uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    slug      text NOT NULL,
    port      integer CHECK (port BETWEEN 1 AND 65535),
    url       text,
    subdomain boolean NOT NULL,
    share     text NOT NULL CHECK (share IN ('owner', 'authenticated', 'public')),
    UNIQUE (agent_id, slug),
    CHECK ((port IS NULL) <> (url IS NULL))
);
