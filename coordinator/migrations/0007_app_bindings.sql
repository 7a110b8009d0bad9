-- Trust boundaries, second pass.

-- A login ticket and the app session it signs in are for one app: the token
-- binding of the address the browser was sent back to. A region holding one
-- app session gets tokens for that app only. NULL (tickets and sessions of
-- the previous release) signs in to no app: the browser fetches a new ticket.
ALTER TABLE app_tickets ADD COLUMN binding text;
ALTER TABLE sessions ADD COLUMN binding text;

-- What a proxy does with an app's own CORS headers: 'default' drops them
-- unless the request comes from the app's own origin; 'passthru' (the
-- owner's opt-in) passes them, except to sandboxed pages and other users' apps.
ALTER TABLE apps ADD COLUMN cors text NOT NULL DEFAULT 'default' CHECK (cors IN ('default', 'passthru'));
