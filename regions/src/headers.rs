//! Header, cookie and query parameter names of the external contract (ARCHITECTURE.md),
//! and how cookie fields are read: as bytes, split into crumbs (any octet an app put in
//! a cookie hides none of the others), what an app is given, what it may not set.

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

/// The cookies ("crumbs", `name=value`) of one `Cookie` field, each trimmed,
/// empty ones skipped (RFC 6265 §4.2.1: `cookie-pair *( ";" SP cookie-pair )`).
/// Split as bytes, not text: a cookie an app set may hold any octet (a UTF-8
/// value, say), and one such cookie must not hide the others in its field —
/// Meridian's own among them. (The `cookie` crate parses only `&str`.)
pub fn crumbs(field: &http::HeaderValue) -> impl Iterator<Item = &[u8]> {
    // `memchr`: a field is mostly one long token, searched a word at a time.
    let mut rest = Some(field.as_bytes());
    std::iter::from_fn(move || {
        let r = rest?;
        let (crumb, after) = memchr::memchr(b';', r).map_or((r, None), |at| (&r[..at], Some(&r[at + 1..])));
        rest = after;
        Some(crumb)
    })
    .map(<[u8]>::trim_ascii)
    .filter(|c| !c.is_empty())
}

/// The name of a crumb or of a `Set-Cookie` field's first pair: what comes
/// before the first `=`, trimmed; a pair without `=` is all name (the
/// stricter reading: RFC 6265bis §5.7 makes it a nameless cookie's value).
pub fn crumb_name(pair: &[u8]) -> &[u8] {
    pair.split(|&b| b == b'=').next().unwrap_or_default().trim_ascii()
}

/// Whether a cookie name is one of Meridian's (`meridian_…`, or
/// `__Host-meridian_…`, in any case). Bytes: a name need not be text.
pub fn is_meridian_cookie(name: &[u8]) -> bool {
    const PREFIX: &[u8] = b"meridian_";
    let starts = |s: &[u8], p: &[u8]| s.get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p));
    let name = name.trim_ascii();
    let host_only = HOST_ONLY_PREFIX.as_bytes();
    let name = if starts(name, host_only) { &name[host_only.len()..] } else { name };
    starts(name, PREFIX)
}

/// Whether a `Set-Cookie` field (bytes, whatever they hold) sets a cookie
/// the browser would send back as one of Meridian's: its first pair's name
/// is one (RFC 6265 §5.2), or the pair has an empty name and its value reads
/// as one (`=meridian_app_token=x`: a browser keeps a nameless cookie and
/// sends its value alone, RFC 6265bis §5.7, which reads as
/// `meridian_app_token=x`).
pub fn sets_meridian_cookie(field: &[u8]) -> bool {
    let pair = field.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
    let name = crumb_name(pair);
    match pair.iter().position(|&b| b == b'=') {
        Some(eq) if name.is_empty() => is_meridian_cookie(crumb_name(&pair[eq + 1..])),
        _ => is_meridian_cookie(name),
    }
}

/// The `Cookie` fields' crumbs that are not Meridian's, joined into one
/// field's value (RFC 6265 §5.4: one field, `"; "` between crumbs), every
/// byte as the client sent it; empty when none is left. What an app is
/// given of a request's cookies.
pub fn app_cookies<'a>(fields: impl Iterator<Item = &'a http::HeaderValue>) -> Vec<u8> {
    let mut kept = Vec::new();
    for crumb in fields.flat_map(crumbs).filter(|c| !is_meridian_cookie(crumb_name(c))) {
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(crumb);
    }
    kept
}

/// Every value of cookie `name` a request carries, in the order sent (at
/// most [`MAX_COOKIE_COPIES`]). Values are borrowed from `headers` (a cookie
/// value is never decoded); a crumb that is not UTF-8 is skipped alone.
pub fn cookie_copies<'a>(headers: &'a http::HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(crumbs)
        .filter(move |c| crumb_name(c) == name.as_bytes())
        .filter_map(|c| std::str::from_utf8(c).ok())
        // Parsed from a borrowed string, a cookie's value is that string's.
        .filter_map(|c| cookie::Cookie::parse(c).ok()?.value_raw())
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

    #[test]
    fn a_cookie_that_is_not_ascii_hides_none_of_the_others() {
        let mut h = http::HeaderMap::new();
        // A UTF-8 value an app set, then one that is not even UTF-8 (Latin-1).
        let field =
            [&b"lang=fran\xc3\xa7ais; meridian_app_token=t1; x=caf\xe9; "[..], b"meridian_app_token=t2"].concat();
        h.append(http::header::COOKIE, http::HeaderValue::from_bytes(&field).unwrap());
        let copies: Vec<&str> = super::cookie_copies(&h, "meridian_app_token").collect();
        assert_eq!(copies, ["t1", "t2"]);
        assert_eq!(super::cookie_copies(&h, "lang").collect::<Vec<_>>(), ["français"]);
        assert_eq!(super::cookie_copies(&h, "x").count(), 0, "not UTF-8: skipped alone");
    }

    #[test]
    fn set_cookie_fields_that_set_a_meridian_cookie() {
        for (field, sets) in [
            (&b"ok=1; Path=/"[..], false),
            (b"meridian_app_token=evil; Path=/", true),
            (b" MERIDIAN_SESSION=evil", true),
            (b"__Host-meridian_session=evil; Secure; Path=/", true),
            (b"meridian_app_token=\xc3\xa9vil; Path=/", true),
            (b"meridian_session=evil; Path=/; Note=\xff", true),
            (b"meridian_app_session", true),
            // Nameless: the browser sends `meridian_app_token=evil`.
            (b"=meridian_app_token=evil; Path=/x", true),
            (b" = meridian_session=evil", true),
            (b"=ok=1", false),
            (b"==meridian_app_token=evil", false),
            (b"lang=fran\xc3\xa7ais", false),
            (b"a=meridian_app_token=x", false),
        ] {
            assert_eq!(super::sets_meridian_cookie(field), sets, "{}", String::from_utf8_lossy(field));
        }
    }

    #[test]
    fn crumb_names() {
        for (pair, name) in [
            (&b"a=1"[..], &b"a"[..]),
            (b" meridian_session = s ", b"meridian_session"),
            (b"meridian_app_token", b"meridian_app_token"),
            (b"=v", b""),
            (b"n=a=b", b"n"),
            (b"caf\xc3\xa9=1", b"caf\xc3\xa9"),
        ] {
            assert_eq!(super::crumb_name(pair), name, "{}", String::from_utf8_lossy(pair));
        }
    }
}
