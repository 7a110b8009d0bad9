//! Header, cookie and query parameter names of the external contract (ARCHITECTURE.md).

/// Header carrying a user's session token.
pub const SESSION_TOKEN: &str = "Meridian-Session-Token";
/// Header carrying a regional proxy's token.
pub const PROXY_TOKEN: &str = "Meridian-Proxy-Token";
/// Header carrying a workspace agent's token.
pub const AGENT_TOKEN: &str = "Meridian-Agent-Token";
/// Header carrying an agent's attach token (see `app_token::AttachClaims`).
pub const AGENT_ATTACH_TOKEN: &str = "Meridian-Agent-Attach-Token";
/// Header carrying the mesh secret on a link between two relays.
pub const MESH_SECRET: &str = "Meridian-Mesh-Secret";
/// The coordinator's own (primary) proxy proves with this header, on what it
/// forwards to the API on loopback, that its `X-Forwarded-For` is its own: a
/// secret made anew by each coordinator process, never leaving it.
pub const FORWARDED_BY: &str = "Meridian-Forwarded-By";
/// Cookie holding a user's session on the primary's host.
pub const SESSION_COOKIE: &str = "meridian_session";
/// Cookie holding an app-scoped session on an app host.
pub const APP_SESSION_COOKIE: &str = "meridian_app_session";
/// Cookie holding the short-lived signed app token.
pub const APP_TOKEN_COOKIE: &str = "meridian_app_token";
/// Query parameter carrying a one-time login ticket back to a proxy.
pub const APP_TICKET_PARAM: &str = "meridian_app_ticket";
/// The prefix browsers honour only on a cookie that is `Secure`, has `Path=/`
/// and no `Domain` (RFC 6265bis, "Cookie Name Prefixes"): no other host, a
/// sibling app on a parent domain included, can set a cookie of such a name.
pub const HOST_ONLY_PREFIX: &str = "__Host-";

/// The name Meridian cookie `name` goes by: over HTTPS, where the cookie is
/// for a whole host (`Path=/`), the [`HOST_ONLY_PREFIX`]ed name (which a
/// sibling host cannot plant); else `name` itself.
pub fn cookie_name(name: &'static str, https_whole_host: bool) -> &'static str {
    if !https_whole_host {
        return name;
    }
    match name {
        SESSION_COOKIE => "__Host-meridian_session",
        APP_SESSION_COOKIE => "__Host-meridian_app_session",
        APP_TOKEN_COOKIE => "__Host-meridian_app_token",
        other => other,
    }
}

/// How many copies of one credential cookie are tried, at most. A sibling
/// host (another user's app under the same registrable domain) can plant a
/// cookie of the same name on a parent domain or a longer path; the browser
/// then sends both, and the one that verifies is the user's. More copies
/// than this are not looked at (each may cost a check).
pub const MAX_COOKIE_COPIES: usize = 4;

/// Every value of cookie `name` a request carries, in the order sent (at
/// most [`MAX_COOKIE_COPIES`]). Values are borrowed from `headers` (a cookie
/// value is never decoded).
pub fn cookie_copies<'a>(headers: &'a http::HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .flatten()
        .filter(move |c| c.name() == name)
        // Parsed from a borrowed string, a cookie's value is that string's.
        .filter_map(|c| c.value_raw())
        .take(MAX_COOKIE_COPIES)
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_only_names_over_https_for_whole_hosts() {
        use super::*;
        assert_eq!(cookie_name(SESSION_COOKIE, true), "__Host-meridian_session");
        assert_eq!(cookie_name(APP_TOKEN_COOKIE, true), format!("{HOST_ONLY_PREFIX}{APP_TOKEN_COOKIE}"));
        assert_eq!(cookie_name(APP_SESSION_COOKIE, true), format!("{HOST_ONLY_PREFIX}{APP_SESSION_COOKIE}"));
        for name in [SESSION_COOKIE, APP_TOKEN_COOKIE, APP_SESSION_COOKIE] {
            assert_eq!(cookie_name(name, false), name);
        }
    }

    #[test]
    fn every_copy_of_a_cookie_in_order() {
        let mut h = http::HeaderMap::new();
        h.append(http::header::COOKIE, "meridian_app_session=planted; a=1; meridian_app_session=s".parse().unwrap());
        h.append(http::header::COOKIE, "meridian_app_session=third".parse().unwrap());
        let copies: Vec<&str> = super::cookie_copies(&h, "meridian_app_session").collect();
        assert_eq!(copies, ["planted", "s", "third"]);
        assert_eq!(super::cookie_copies(&h, "missing").count(), 0);
        let many = "x=1; ".repeat(10);
        let mut flood = http::HeaderMap::new();
        flood.append(http::header::COOKIE, many.parse().unwrap());
        assert_eq!(super::cookie_copies(&flood, "x").count(), super::MAX_COOKIE_COPIES);
    }
}
