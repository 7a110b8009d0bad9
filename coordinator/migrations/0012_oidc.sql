-- OpenID Connect sign-in. Expand-only (new tables).
--
-- A user who signs in through the identity provider is linked to it by the
-- provider's issuer and subject (never by name or e-mail, which the provider
-- may reassign); such a user has no usable password.
CREATE TABLE user_identities (
    user_id   uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    issuer    text NOT NULL,
    subject   text NOT NULL,
    linked_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (issuer, subject)
);

-- Sign-ins under way: one row per redirect to the provider, taken (deleted)
-- by its callback, so a state is good once. Keyed by a hash of the state
-- (the browser holds the state itself); the PKCE verifier is sealed with the
-- secrets key.
CREATE TABLE oidc_flows (
    state_hash      bytea PRIMARY KEY,
    nonce           text NOT NULL,
    verifier_sealed bytea NOT NULL,
    redirect        text NOT NULL,
    expires_at      timestamptz NOT NULL
);
CREATE INDEX oidc_flows_expires_at ON oidc_flows (expires_at);

-- One-time codes handing a session to `meridian login` after a sign-in in
-- the browser: the CLI proves it began the exchange with the PKCE verifier
-- whose challenge the code was made for. Stored hashed, good for 2 minutes.
CREATE TABLE cli_auth_codes (
    code_hash  bytea PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    challenge  text NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX cli_auth_codes_expires_at ON cli_auth_codes (expires_at);

-- The provider's refresh token of each user linked to it (sealed), used on
-- a schedule (`--oidc-refresh-interval`): a provider that refuses it (the
-- user was disabled or removed there) gets the user suspended here. Only
-- when the provider hands out refresh tokens (the `offline_access` scope).
CREATE TABLE oidc_refresh (
    user_id        uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    refresh_sealed bytea NOT NULL,
    checked_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oidc_refresh_checked_at ON oidc_refresh (checked_at);
