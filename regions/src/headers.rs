//! Header, cookie and query parameter names of the external contract (ARCHITECTURE.md).

/// Header carrying a user's session token.
pub const SESSION_TOKEN: &str = "Meridian-Session-Token";
/// Header carrying a regional proxy's token.
pub const PROXY_TOKEN: &str = "Meridian-Proxy-Token";
/// Header carrying a workspace agent's token.
pub const AGENT_TOKEN: &str = "Meridian-Agent-Token";
/// Cookie holding a user's session on the primary's host.
pub const SESSION_COOKIE: &str = "meridian_session";
/// Cookie holding an app-scoped session on an app host.
pub const APP_SESSION_COOKIE: &str = "meridian_app_session";
/// Cookie holding the short-lived signed app token.
pub const APP_TOKEN_COOKIE: &str = "meridian_app_token";
/// Query parameter carrying a one-time login ticket back to a proxy.
pub const APP_TICKET_PARAM: &str = "meridian_app_ticket";
