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
/// Cookie holding a user's session on the primary's host.
pub const SESSION_COOKIE: &str = "meridian_session";
/// Cookie holding an app-scoped session on an app host.
pub const APP_SESSION_COOKIE: &str = "meridian_app_session";
/// Cookie holding the short-lived signed app token.
pub const APP_TOKEN_COOKIE: &str = "meridian_app_token";
/// Query parameter carrying a one-time login ticket back to a proxy.
pub const APP_TICKET_PARAM: &str = "meridian_app_ticket";

/// The value of cookie `name` among a request's `Cookie` headers, if sent.
pub fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .flatten()
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// A cookie sent more than once (see [`unique_cookie`]).
#[derive(Debug, PartialEq, Eq)]
pub struct DuplicateCookie;

/// Cookie `name` if sent at most once; [`DuplicateCookie`] if sent twice or
/// more, which for a credential means someone planted a second one.
/// The value is borrowed from `headers` (a cookie value is never decoded).
pub fn unique_cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Result<Option<&'h str>, DuplicateCookie> {
    let mut found = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .flatten()
        .filter(|c| c.name() == name);
    // Parsed from a borrowed string, a cookie's value is that string's.
    let first = found.next().map(|c| c.value_raw().unwrap_or_default());
    match found.next() {
        Some(_) => Err(DuplicateCookie),
        None => Ok(first),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cookie_lookup() {
        let mut h = http::HeaderMap::new();
        h.append(http::header::COOKIE, "a=1; meridian_app_token=t".parse().unwrap());
        h.append(http::header::COOKIE, "b=2".parse().unwrap());
        assert_eq!(super::cookie(&h, "meridian_app_token").as_deref(), Some("t"));
        assert_eq!(super::cookie(&h, "b").as_deref(), Some("2"));
        assert_eq!(super::cookie(&h, "meridian"), None);
    }

    #[test]
    fn duplicate_cookies() {
        let mut h = http::HeaderMap::new();
        h.append(http::header::COOKIE, "a=1; meridian_app_session=s".parse().unwrap());
        assert_eq!(super::unique_cookie(&h, "meridian_app_session"), Ok(Some("s")));
        assert_eq!(super::unique_cookie(&h, "missing"), Ok(None));
        h.append(http::header::COOKIE, "meridian_app_session=planted".parse().unwrap());
        assert_eq!(super::unique_cookie(&h, "meridian_app_session"), Err(super::DuplicateCookie));
        let one_header: http::HeaderMap = [(http::header::COOKIE, "x=1; x=2".parse().unwrap())].into_iter().collect();
        assert_eq!(super::unique_cookie(&one_header, "x"), Err(super::DuplicateCookie));
    }
}
