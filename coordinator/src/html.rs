//! The HTML the coordinator writes, apart from any handler: the page shell,
//! the sign-in page, escaping, and the Content-Security-Policy every page
//! carries. The API (`crate::api`) and the dashboard (`crate::dashboard`)
//! both use it; it uses neither.

use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};

/// The page around `main`: `nav` with the page id, or none (error pages).
pub fn shell(title: &str, nav: Option<(&str, &str)>, main: &str) -> String {
    // An error page runs no script (and so measures nothing).
    let script = if nav.is_some() { "<script src=\"/assets/dashboard.js\" defer></script>" } else { "" };
    let (id, nav) = nav.unwrap_or(("error", ""));
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Meridian</title><link rel=\"stylesheet\" href=\"/assets/dashboard.css\">\
         {script}</head><body data-page=\"{id}\">{nav}{main}</body></html>"
    )
}

/// The page's policy: scripts and styles only from this origin, requests to
/// this origin and the regions' (latency checks), never framed.
pub fn with_policy(mut resp: Response, origins: &[String]) -> Response {
    let mut connect = String::from("'self'");
    for o in origins {
        connect.push(' ');
        connect.push_str(o);
    }
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src {connect}; \
         form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&policy) {
        resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `scheme://host[:port]` of a URL, if it is http(s).
pub fn origin(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    matches!(u.scheme(), "http" | "https").then(|| u.origin().ascii_serialization())
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// The sign-in page; `back` is where to go after (already checked to be a
/// local path); a "Sign in with `provider`" link when OIDC is set up, the
/// password form unless `password` sign-in is disabled.
pub fn login_page(back: &str, provider: Option<&str>, password: bool) -> Response {
    let oidc = provider.map_or_else(String::new, |name| {
        let href = format!(
            "/api/v2/users/oidc/login?redirect={}",
            url::form_urlencoded::byte_serialize(back.as_bytes()).collect::<String>()
        );
        format!(
            "<p><a class=\"button\" id=\"oidc-sign-in\" href=\"{}\">Sign in with {}</a></p>",
            escape(&href),
            escape(name)
        )
    });
    let form = if password {
        format!(
            "<form id=\"sign-in\" data-redirect=\"{}\">\
             <label for=\"username\">Username</label><input id=\"username\" name=\"username\" autocomplete=\"username\" required>\
             <label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
             <button type=\"submit\">Sign in</button></form>",
            escape(back)
        )
    } else {
        String::new()
    };
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Sign in · Meridian</title><link rel=\"stylesheet\" href=\"/assets/dashboard.css\">\
         <script src=\"/assets/login.js\" defer></script></head><body data-page=\"login\">\
         <main class=\"narrow\"><h1>Sign in to Meridian</h1>{oidc}{form}\
         <p id=\"error\" class=\"error\" role=\"alert\"></p></main></body></html>"
    );
    with_policy(Html(body).into_response(), &[])
}

#[cfg(test)]
mod tests {
    #[test]
    fn escaping_and_origins() {
        assert_eq!(super::escape("<a href=\"x\">'&"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;");
        assert_eq!(
            super::origin("https://sydney.example.com:8443/x").as_deref(),
            Some("https://sydney.example.com:8443")
        );
        assert_eq!(super::origin("javascript:alert(1)"), None);
    }
}
