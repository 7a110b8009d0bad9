-- Trust boundaries (issue: a region reaches only what it was given).

-- A region's hostnames, set by an admin or pinned by its first registration.
-- NULL: not pinned yet. wildcard_hostname '' means "no subdomain apps".
ALTER TABLE regions ADD COLUMN access_url text;
ALTER TABLE regions ADD COLUMN wildcard_hostname text;

-- An app session belongs to the user session that signed it in: signing out
-- ends both, and it never outlives its parent.
ALTER TABLE sessions ADD COLUMN parent_id uuid REFERENCES sessions (id) ON DELETE CASCADE;
CREATE INDEX sessions_parent_id ON sessions (parent_id);

-- A ticket remembers the session that minted it (for the app session's parent).
ALTER TABLE app_tickets ADD COLUMN session_id uuid REFERENCES sessions (id) ON DELETE CASCADE;
