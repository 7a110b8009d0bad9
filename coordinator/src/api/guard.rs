//! What every request to the API and its pages passes before a handler:
//!
//! - **Host**: only the access URL's host, IP addresses, `localhost` and the
//!   `--allowed-host` names; any other name gets 421. A page on an attacker's
//!   domain that re-resolves to the coordinator (DNS rebinding) is refused.
//! - **Origin** (CSRF): a state change (any method but GET, HEAD, OPTIONS)
//!   that names an `Origin` must come from the access URL's origin, and one
//!   authenticated by the session cookie must name it. An app's page, whether
//!   on another origin of the same site (a region on another port, a subdomain
//!   app) or sandboxed on this one (`Origin: null`), cannot act as its viewer.
//!   Clients that send `Meridian-Session-Token` are not browsers riding a
//!   cookie and pass.
//! - **Answers** tell browsers not to sniff, frame or leak them.

use super::AppState;
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use meridian_regions::headers::{SESSION_COOKIE, SESSION_TOKEN};

/// The policy on JSON answers: nothing in them runs, nothing frames them.
const API_POLICY: &str = "default-src 'none'; frame-ancestors 'none'; sandbox";
/// The policy on the coordinator's own pages: never framed (clickjacking).
const PAGE_POLICY: &str = "frame-ancestors 'none'";

pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    if let Err(e) = check(&state, req.method(), req.headers(), authority.as_deref()) {
        return secured(e.into_response());
    }
    secured(next.run(req).await)
}

fn check(state: &AppState, method: &Method, headers: &HeaderMap, authority: Option<&str>) -> Result<(), ApiError> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).or(authority).unwrap_or_default();
    if !host_allowed(state, host) {
        return Err(ApiError::Misdirected(format!(
            "This coordinator does not answer for host {host:?}; use {} (or add the name with --allowed-host).",
            state.config.access_url.origin().ascii_serialization()
        )));
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let own = state.config.access_url.origin().ascii_serialization();
    match headers.get(header::ORIGIN).map(|o| o.to_str().unwrap_or("?")) {
        Some(origin) if origin.eq_ignore_ascii_case(&own) => Ok(()),
        Some(origin) => Err(ApiError::Forbidden(format!(
            "Cross-origin request refused: it came from {origin}, not from {own}. Open Meridian at {own}."
        ))),
        None if cookie_authenticated(headers) => Err(ApiError::Forbidden(format!(
            "A request signed in by cookie must come from a page of {own} (it named no Origin)."
        ))),
        None => Ok(()),
    }
}

/// Whether the request would be signed in by the session cookie alone.
fn cookie_authenticated(headers: &HeaderMap) -> bool {
    headers.get(SESSION_TOKEN).is_none()
        && meridian_regions::headers::unique_cookie(headers, SESSION_COOKIE).map_or(true, |c| c.is_some())
}

/// The access URL's host, an IP address, `localhost`, or an allowed name; any port.
fn host_allowed(state: &AppState, host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return false;
    }
    let ip = name.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok();
    ip || name == "localhost"
        || state.config.access_url.host_str().is_some_and(|h| h.eq_ignore_ascii_case(&name))
        || state.config.allowed_hosts.contains(&name)
}

fn secured(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    let json = h.get(header::CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        let policy = if json { API_POLICY } else { PAGE_POLICY };
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(policy));
    }
    resp
}
