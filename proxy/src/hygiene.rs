//! Header hygiene between client and app: Meridian's credentials never reach
//! the app, forwarding headers are the proxy's own, an app can never set a
//! Meridian cookie, a WebSocket to an app comes from that app's own pages,
//! a path app shown to someone other than its owner runs sandboxed, and an
//! app's CORS grants reach no other origin unless its owner opted in (and
//! then never another user's app).

use meridian_regions::app_url::HostMatch;
use meridian_regions::headers;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

/// Headers that carry Meridian credentials.
const CREDENTIAL_HEADERS: [&str; 6] = [
    headers::SESSION_TOKEN,
    meridian_regions::stream::TOKEN_HEADER,
    headers::PROXY_TOKEN,
    headers::AGENT_TOKEN,
    headers::AGENT_ATTACH_TOKEN,
    headers::MESH_SECRET,
];
/// The policy on a sandboxed app's answers: its pages run scripts and submit
/// forms, but in an opaque origin, so they cannot read or send the viewer's
/// cookies for this origin (the dashboard's session on the primary, the
/// viewer's other apps elsewhere). No `allow-same-origin`, ever.
const SANDBOX_POLICY: &str =
    "sandbox allow-scripts allow-forms allow-popups allow-popups-to-escape-sandbox allow-modals allow-downloads";
/// The CORS response headers (Fetch standard, "HTTP responses"): what an
/// app grants other origins.
const CORS_HEADERS: [&str; 7] = [
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
    "access-control-allow-private-network",
];
/// Forwarding headers a client could spoof (and the primary proxy's proof
/// that its own are its own).
const FORWARDING_HEADERS: [&str; 6] =
    ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip", headers::FORWARDED_BY];

/// Removes the headers in `names` that the request has (usually none: a scan
/// of its few headers instead of a map removal per listed name).
fn remove_present<'a>(req: &mut RequestHeader, names: impl Iterator<Item = &'a &'a str> + Clone) {
    let listed = |name: &http::HeaderName| names.clone().any(|h| name.as_str().eq_ignore_ascii_case(h));
    let present: Vec<http::HeaderName> = req.headers.keys().filter(|k| listed(k)).cloned().collect();
    for h in &present {
        req.remove_header(h);
    }
}

/// Replaces whatever forwarding headers the client sent with the proxy's
/// own: `X-Forwarded-For` (the client's address as this proxy saw it),
/// `-Proto` and `-Host`. Per request and on every app request, so without
/// parsing the (static) names or copying a value the request already holds:
/// `-Host` shares the Host field's bytes when they are the host.
/// `client_ip` is the client's address as a field value (see `memo::client_ip`).
pub fn forwarding(
    req: &mut RequestHeader,
    client_ip: Option<http::HeaderValue>,
    proto: &'static str,
    host: &str,
) -> Result<()> {
    let invalid = |what| pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, what);
    remove_present(req, FORWARDING_HEADERS.iter());
    let host = match req.headers.get(http::header::HOST) {
        Some(h) if h.as_bytes() == host.as_bytes() => h.clone(),
        _ => http::HeaderValue::from_str(host).map_err(|_| invalid("invalid host for X-Forwarded-Host"))?,
    };
    req.reserve_headers(3)?;
    if let Some(ip) = client_ip {
        req.insert_static_header("x-forwarded-for", ip)?;
    }
    req.insert_static_header("x-forwarded-proto", http::HeaderValue::from_static(proto))?;
    req.insert_static_header("x-forwarded-host", host)
}

/// Cleans the request the app will see and sets `X-Forwarded-*`.
pub fn request(
    req: &mut RequestHeader,
    client_ip: Option<http::HeaderValue>,
    proto: &'static str,
    host: &str,
) -> Result<()> {
    remove_present(req, CREDENTIAL_HEADERS.iter());
    app_cookies(req)?;
    forwarding(req, client_ip, proto, host)
}

/// Leaves the app the cookies that are its own, in one `Cookie` field
/// (RFC 6265 §5.4), every byte of them as the client sent it.
fn app_cookies(req: &mut RequestHeader) -> Result<()> {
    let kept = headers::app_cookies(req.headers.get_all(http::header::COOKIE).iter());
    req.remove_header(&http::header::COOKIE);
    if kept.is_empty() {
        return Ok(());
    }
    // Crumbs of valid fields, joined by "; ": a valid field value.
    let kept = http::HeaderValue::from_maybe_shared(bytes::Bytes::from(kept))
        .map_err(|_| pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, "invalid Cookie"))?;
    req.insert_header(http::header::COOKIE, kept)
}

/// Whether a request may go on as far as its `Origin` goes: anything but a
/// WebSocket upgrade, an upgrade without `Origin` (not a browser), or one
/// from the app's own origin. A page on another origin must not open a
/// socket that rides the user's app cookies (cross-site WebSocket hijacking).
pub fn same_origin_upgrade(req: &RequestHeader, scheme: &str, host: &str) -> bool {
    let upgrade =
        req.headers.get(http::header::UPGRADE).is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(origin) = req.headers.get(http::header::ORIGIN) else { return true };
    !upgrade || is_own_origin(origin.as_bytes(), scheme, host)
}

/// Whether `origin` (an `Origin` header's value) is the origin of the page
/// at `scheme://host`. `Origin: http://h` also matches `Host: h:80` (and
/// https with 443).
fn is_own_origin(origin: &[u8], scheme: &str, host: &str) -> bool {
    let Some((their_scheme, their_host)) = std::str::from_utf8(origin).ok().and_then(|o| o.split_once("://")) else {
        return false;
    };
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    let bare_host = host.strip_suffix(default_port).unwrap_or(host);
    their_scheme.eq_ignore_ascii_case(scheme)
        && (their_host.eq_ignore_ascii_case(host) || their_host.eq_ignore_ascii_case(bare_host))
}

/// The app a CORS answer is for, as [`cors`] needs it.
pub struct CorsScope<'a> {
    /// The request's `Origin`, if any.
    pub origin: Option<&'a [u8]>,
    /// The app's own scheme and host (with port) as browsers see it.
    pub scheme: &'a str,
    pub host: &'a str,
    /// The app's owner (the username in its address).
    pub owner: &'a str,
    /// The owner opted the app into passing its CORS headers through.
    pub passthru: bool,
}

/// Drops the app's CORS headers unless they may reach the request's origin.
///
/// Every app host of a region is one site, so a browser sends a viewer's
/// app cookies along with a credentialed `fetch` from any other app's page;
/// an app that reflects `Origin` with credentials (many dev servers do)
/// would be read by another user's app as its viewer. So by default an
/// app's grants stand only for its own origin (where CORS changes nothing).
/// An owner may opt an app in to pass them through ([`CorsScope::passthru`]);
/// even then none reaches a sandboxed page (`Origin: null`) or a subdomain
/// app of another user, in any region.
pub fn cors(resp: &mut ResponseHeader, scope: &CorsScope<'_>) {
    // Most answers carry none: one pass over their few header names.
    if !resp.headers.keys().any(|k| k.as_str().starts_with("access-control-")) {
        return;
    }
    let keep = match scope.origin {
        Some(origin) if is_own_origin(origin, scope.scheme, scope.host) => true,
        Some(origin) if scope.passthru => !is_foreign_origin(origin, scope.owner),
        _ => false,
    };
    if !keep {
        for name in CORS_HEADERS {
            resp.remove_header(name);
        }
    }
}

/// Whether `origin` is a sandboxed page's (`null`), unreadable, or a
/// subdomain app (`{app}--{agent}--{workspace}--{user}.…`, any region's
/// wildcard) of a user other than `owner`.
fn is_foreign_origin(origin: &[u8], owner: &str) -> bool {
    let Some((_, host)) = std::str::from_utf8(origin).ok().and_then(|o| o.split_once("://")) else {
        return true; // `null`, or not an origin at all
    };
    let name = meridian_regions::app_url::strip_port(host);
    let Some((_, base)) = name.split_once('.') else { return false };
    match meridian_regions::app_url::parse_host(name, base) {
        HostMatch::App(app) => !app.user.eq_ignore_ascii_case(owner),
        // A label with the app grammar's shape that does not parse: not
        // another user's app address, but nothing to grant either.
        HostMatch::Invalid(_) => name.contains("--"),
        HostMatch::NotAnApp => false,
    }
}

/// Drops any `Set-Cookie` of a Meridian cookie from the app's response and,
/// with `sandbox`, adds [`SANDBOX_POLICY`] (on top of any policy of the app's
/// own: browsers enforce every policy sent) and drops `Service-Worker-Allowed`.
pub fn response(resp: &mut ResponseHeader, sandbox: bool) -> Result<()> {
    if sandbox {
        resp.append_header(http::header::CONTENT_SECURITY_POLICY, SANDBOX_POLICY)?;
        resp.remove_header("service-worker-allowed");
    }
    let kept: Vec<http::HeaderValue> = resp
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        // Read as bytes: a field with any byte that is not visible ASCII is
        // still checked.
        .filter(|v| !headers::sets_meridian_cookie(v.as_bytes()))
        .cloned()
        .collect();
    resp.remove_header(&http::header::SET_COOKIE);
    for v in kept {
        resp.append_header(http::header::SET_COOKIE, v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_cleaned() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("cookie", "a=1; meridian_app_token=t; Meridian_Session=s; __Host-meridian_app_token=h; b=2")
            .unwrap();
        req.append_header("cookie", "meridian_app_session=x").unwrap();
        req.insert_header("meridian-session-token", "secret").unwrap();
        req.insert_header("meridian-mesh-secret", "secret").unwrap();
        req.insert_header("meridian-agent-attach-token", "secret").unwrap();
        req.insert_header("x-forwarded-for", "6.6.6.6").unwrap();
        req.insert_header("forwarded", "for=6.6.6.6").unwrap();
        request(&mut req, Some(http::HeaderValue::from_static("127.0.0.1")), "https", "app.example").unwrap();
        assert_eq!(req.headers["cookie"], "a=1; b=2");
        for h in ["meridian-session-token", "meridian-mesh-secret", "meridian-agent-attach-token"] {
            assert!(req.headers.get(h).is_none(), "{h} reached the app");
        }
        assert!(req.headers.get("forwarded").is_none());
        assert_eq!(req.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(req.headers["x-forwarded-proto"], "https");
        assert_eq!(req.headers["x-forwarded-host"], "app.example");

        // On the wire: each forwarding field once, the client's gone, the
        // Host's own bytes shared when it is the host.
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("Host", "app.example:8080").unwrap();
        req.insert_header("X-Forwarded-Host", "evil.example").unwrap();
        req.insert_header("X-Forwarded-Proto", "gopher").unwrap();
        forwarding(&mut req, Some(http::HeaderValue::from_static("10.0.0.1")), "http", "app.example:8080").unwrap();
        let mut wire = bytes::BytesMut::new();
        req.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire.to_vec()).unwrap();
        let lines: Vec<&str> = wire.split("\r\n").filter(|l| !l.is_empty()).collect();
        assert_eq!(
            lines,
            [
                "Host: app.example:8080",
                "x-forwarded-for: 10.0.0.1",
                "x-forwarded-proto: http",
                "x-forwarded-host: app.example:8080"
            ]
        );
        // A Host that is not the routed host as written (another case) is not copied.
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("Host", "App.Example").unwrap();
        forwarding(&mut req, None, "https", "app.example").unwrap();
        assert_eq!(req.headers["x-forwarded-host"], "app.example");
        assert!(req.headers.get("x-forwarded-for").is_none());

        let mut only = RequestHeader::build("GET", b"/", None).unwrap();
        only.insert_header("cookie", "meridian_app_token=t").unwrap();
        request(&mut only, None, "http", "h").unwrap();
        assert!(only.headers.get("cookie").is_none());
    }

    #[test]
    fn the_apps_own_cookies_reach_it_byte_for_byte_whatever_their_bytes() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        let field = &b"lang=fran\xc3\xa7ais; meridian_app_token=t; x=caf\xe9;  ;meridian_SESSION\xff=s;b=2"[..];
        req.insert_header("cookie", http::HeaderValue::from_bytes(field).unwrap()).unwrap();
        req.append_header("cookie", "c=3; __Host-meridian_app_session=x").unwrap();
        request(&mut req, None, "https", "app.example").unwrap();
        let cookies: Vec<_> = req.headers.get_all("cookie").iter().map(|v| v.as_bytes()).collect();
        assert_eq!(cookies, [&b"lang=fran\xc3\xa7ais; x=caf\xe9; b=2; c=3"[..]]);
    }

    #[test]
    fn app_cannot_set_meridian_cookies() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("set-cookie", "ok=1; Path=/").unwrap();
        resp.append_header("set-cookie", "meridian_app_token=evil; Path=/").unwrap();
        resp.append_header("set-cookie", " MERIDIAN_SESSION=evil").unwrap();
        resp.append_header("set-cookie", "__Host-meridian_session=evil; Secure; Path=/").unwrap();
        resp.append_header("set-cookie", "__host-Meridian_app_token=evil; Secure; Path=/").unwrap();
        // Bytes that are not visible ASCII, in the value or an attribute, hide nothing.
        let evil = [
            &b"meridian_app_token=\xc3\xa9vil; Path=/"[..],
            b"meridian_session=evil; Path=/; X=\xff",
            b"meridian_app_session",
            b"=meridian_app_token=evil; Path=/x",
        ];
        for v in evil {
            resp.append_header("set-cookie", http::HeaderValue::from_bytes(v).unwrap()).unwrap();
        }
        resp.append_header("set-cookie", http::HeaderValue::from_bytes(b"lang=fran\xc3\xa7ais").unwrap()).unwrap();
        response(&mut resp, false).unwrap();
        let cookies: Vec<_> = resp.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, [&b"ok=1; Path=/"[..], b"lang=fran\xc3\xa7ais"]);
        assert!(resp.headers.get("content-security-policy").is_none());
    }

    #[test]
    fn sandboxed_answers_keep_the_apps_policy_and_add_ours() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("content-security-policy", "default-src 'self'").unwrap();
        resp.append_header("service-worker-allowed", "/").unwrap();
        response(&mut resp, true).unwrap();
        let policies: Vec<_> = resp.headers.get_all("content-security-policy").iter().collect();
        assert_eq!(policies, ["default-src 'self'", SANDBOX_POLICY]);
        assert!(!SANDBOX_POLICY.contains("allow-same-origin"));
        assert!(resp.headers.get("service-worker-allowed").is_none());
    }

    #[test]
    fn cors_grants_reach_only_the_apps_own_origin_unless_opted_in() {
        const ALICE: &str = "code--main--dev--alice.r.localhost:7081";
        // (Origin, passthru, kept)
        let cases = [
            (Some("http://code--main--dev--alice.r.localhost:7081"), false, true),
            (Some("HTTP://CODE--main--dev--alice.r.localhost:7081"), false, true),
            (Some("http://evil--main--lab--bob.r.localhost:7081"), false, false),
            (Some("http://other--main--dev--alice.r.localhost:7081"), false, false),
            (Some("http://example.com"), false, false),
            (Some("null"), false, false),
            (None, false, false),
            // Opted in: any origin but a sandboxed page's and another user's app.
            (Some("http://other--main--dev--alice.r.localhost:7081"), true, true),
            (Some("https://8080--main--ws--ALICE.elsewhere.example"), true, true),
            (Some("http://example.com"), true, true),
            (Some("http://evil--main--lab--bob.r.localhost:7081"), true, false),
            (Some("https://evil--main--lab--bob.frankfurt.example.com"), true, false),
            (Some("http://8080--main--lab--bob.r.localhost:7081"), true, false),
            (Some("http://x--y--z.r.localhost:7081"), true, false),
            (Some("null"), true, false),
            (None, true, false),
        ];
        for (origin, passthru, kept) in cases {
            let mut resp = ResponseHeader::build(200, None).unwrap();
            resp.insert_header("access-control-allow-origin", origin.unwrap_or("*")).unwrap();
            resp.insert_header("access-control-allow-credentials", "true").unwrap();
            resp.insert_header("access-control-expose-headers", "x-secret").unwrap();
            resp.insert_header("vary", "Origin").unwrap();
            let scope =
                CorsScope { origin: origin.map(str::as_bytes), scheme: "http", host: ALICE, owner: "alice", passthru };
            cors(&mut resp, &scope);
            let left = CORS_HEADERS.iter().filter(|h| resp.headers.contains_key(**h)).count();
            assert_eq!(left, if kept { 3 } else { 0 }, "{origin:?} passthru={passthru}");
            assert_eq!(resp.headers["vary"], "Origin", "other headers stay");
        }
    }

    #[test]
    fn websocket_origins() {
        let cases = [
            (Some("websocket"), Some("http://app.r.localhost:7081"), "app.r.localhost:7081", true),
            (Some("websocket"), Some("HTTP://APP.r.localhost:7081"), "app.r.localhost:7081", true),
            (Some("websocket"), Some("http://app.r.localhost"), "app.r.localhost:80", true),
            (Some("websocket"), None, "app.r.localhost:7081", true), // not a browser
            (Some("websocket"), Some("http://other.r.localhost:7081"), "app.r.localhost:7081", false),
            (Some("websocket"), Some("http://app.r.localhost:7082"), "app.r.localhost:7081", false),
            (Some("websocket"), Some("https://app.r.localhost:7081"), "app.r.localhost:7081", false),
            (Some("websocket"), Some("null"), "app.r.localhost:7081", false),
            (None, Some("http://other.example"), "app.r.localhost:7081", true), // CORS is the app's business
        ];
        for (upgrade, origin, host, ok) in cases {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            if let Some(u) = upgrade {
                req.insert_header("upgrade", u).unwrap();
            }
            if let Some(o) = origin {
                req.insert_header("origin", o).unwrap();
            }
            assert_eq!(same_origin_upgrade(&req, "http", host), ok, "{upgrade:?} {origin:?} {host}");
        }
    }
}
