//! Header hygiene between client and app: Meridian's credentials never reach
//! the app, forwarding headers are the proxy's own, and an app can never set a
//! Meridian cookie.

use meridian_regions::headers;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

/// Headers that carry Meridian credentials.
const CREDENTIAL_HEADERS: [&str; 3] = [headers::SESSION_TOKEN, headers::PROXY_TOKEN, headers::AGENT_TOKEN];
/// Forwarding headers a client could spoof.
const FORWARDING_HEADERS: [&str; 5] =
    ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"];

/// Whether a cookie name is one of Meridian's.
pub fn is_meridian_cookie(name: &str) -> bool {
    name.trim().to_ascii_lowercase().starts_with("meridian_")
}

/// Cleans the request the app will see and sets `X-Forwarded-*`.
pub fn request(req: &mut RequestHeader, client_ip: Option<String>, proto: &str, host: &str) -> Result<()> {
    for h in CREDENTIAL_HEADERS.iter().chain(FORWARDING_HEADERS.iter()) {
        req.remove_header(*h);
    }
    let kept: Vec<String> = req
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter(|c| !c.trim().is_empty() && !is_meridian_cookie(c.split('=').next().unwrap_or_default()))
        .map(|c| c.trim().to_owned())
        .collect();
    req.remove_header(&http::header::COOKIE);
    if !kept.is_empty() {
        req.insert_header(http::header::COOKIE, kept.join("; "))?;
    }
    if let Some(ip) = client_ip {
        req.insert_header("x-forwarded-for", ip)?;
    }
    req.insert_header("x-forwarded-proto", proto)?;
    req.insert_header("x-forwarded-host", host)?;
    Ok(())
}

/// Drops any `Set-Cookie` of a Meridian cookie from the app's response.
pub fn response(resp: &mut ResponseHeader) -> Result<()> {
    let kept: Vec<http::HeaderValue> = resp
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter(|v| {
            let name = v.to_str().ok().and_then(|s| s.split('=').next()).unwrap_or_default();
            !is_meridian_cookie(name)
        })
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
        req.insert_header("cookie", "a=1; meridian_app_token=t; Meridian_Session=s; b=2").unwrap();
        req.append_header("cookie", "meridian_app_session=x").unwrap();
        req.insert_header("meridian-session-token", "secret").unwrap();
        req.insert_header("x-forwarded-for", "6.6.6.6").unwrap();
        req.insert_header("forwarded", "for=6.6.6.6").unwrap();
        request(&mut req, Some("127.0.0.1".into()), "https", "app.example").unwrap();
        assert_eq!(req.headers["cookie"], "a=1; b=2");
        assert!(req.headers.get("meridian-session-token").is_none());
        assert!(req.headers.get("forwarded").is_none());
        assert_eq!(req.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(req.headers["x-forwarded-proto"], "https");
        assert_eq!(req.headers["x-forwarded-host"], "app.example");

        let mut only = RequestHeader::build("GET", b"/", None).unwrap();
        only.insert_header("cookie", "meridian_app_token=t").unwrap();
        request(&mut only, None, "http", "h").unwrap();
        assert!(only.headers.get("cookie").is_none());
    }

    #[test]
    fn app_cannot_set_meridian_cookies() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("set-cookie", "ok=1; Path=/").unwrap();
        resp.append_header("set-cookie", "meridian_app_token=evil; Path=/").unwrap();
        resp.append_header("set-cookie", " MERIDIAN_SESSION=evil").unwrap();
        response(&mut resp).unwrap();
        let cookies: Vec<_> = resp.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["ok=1; Path=/"]);
    }
}
