-- Shell and TCP streams: each agent's SSH host key (public half, OpenSSH's
-- one-line form), published by the agent and handed to clients to pin.
-- Nullable: agents of the previous release publish none.
ALTER TABLE agents ADD COLUMN host_key text;
