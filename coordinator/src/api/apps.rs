//! App login and app tokens.
//!
//! - `GET /api/v2/applications/auth-redirect?redirect_uri=…` (browser, primary
//!   host): signed in → 303 back to the app with a one-time ticket; signed out
//!   → 303 to `/login`; a `redirect_uri` that is not exactly an app address → 400.
//! - `POST /api/v2/proxies/me/redeem-ticket`: the proxy trades the ticket for an
//!   app-scoped session (the `meridian_app_session` cookie).
//! - `POST /api/v2/proxies/me/issue-app-token`: the proxy trades that session
//!   (or nothing, for public apps) for a short-lived signed token bound to one app.
//! - `GET /api/v2/proxies/me/keys`: the public keys that verify those tokens.

use super::auth::{optional_user, ProxyRegion};
use super::hosts::Served;
use super::json::Json;
use super::AppState;
use crate::error::{ApiError, ApiResult};
use axum::extract::{Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use meridian_regions::api::{
    Cors, IssueAppToken, IssueAppTokenResponse, KeysResponse, RedeemTicket, RedeemTicketResponse, Share,
};
use meridian_regions::app_token::{AppClaims, ISSUER};
use meridian_regions::headers::APP_TICKET_PARAM;
use meridian_regions::redirect::{self, AppHosts};
use meridian_regions::token::Token;

#[derive(serde::Deserialize)]
pub struct AuthRedirectQuery {
    redirect_uri: Option<String>,
}

pub async fn auth_redirect(
    State(state): State<AppState>,
    Query(q): Query<AuthRedirectQuery>,
    parts: Parts,
) -> Response {
    match auth_redirect_inner(&state, q, &parts).await {
        Ok(resp) => resp,
        Err(e) => error_page(e),
    }
}

async fn auth_redirect_inner(state: &AppState, q: AuthRedirectQuery, parts: &Parts) -> ApiResult<Response> {
    let raw = q.redirect_uri.ok_or_else(|| ApiError::BadRequest("redirect_uri is missing.".into()))?;
    let hosts = app_hosts(state).await?;
    let (mut target, binding) =
        redirect::validate_app(&raw, &hosts).map_err(|e| ApiError::BadRequest(format!("{e}.")))?;
    let Some((user, session_id)) = optional_user(parts, state).await? else {
        let back = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let login = format!("/login?redirect={}", urlencode(back));
        return Ok(see_other(&login));
    };
    let host = target.host_str().unwrap_or_default().to_owned();
    let ticket = state.store.create_ticket(user.id, session_id, &host, &binding).await?;
    let kept: Vec<(String, String)> =
        target.query_pairs().filter(|(k, _)| k != APP_TICKET_PARAM).map(|(k, v)| (k.into(), v.into())).collect();
    target.query_pairs_mut().clear().extend_pairs(kept).append_pair(APP_TICKET_PARAM, ticket.encode().expose());
    Ok(see_other(target.as_str()))
}

/// Every app address Meridian serves: the primary's and each region's.
async fn app_hosts(state: &AppState) -> ApiResult<AppHosts> {
    let mut hosts = AppHosts::default();
    hosts.wildcards.extend(state.config.wildcard_access_url.clone());
    hosts.access_urls.push(state.config.access_url.clone());
    for region in state.store.regions().await? {
        for replica in &region.replicas {
            if let Ok(u) = url::Url::parse(&replica.access_url) {
                hosts.access_urls.push(u);
            }
        }
        hosts.wildcards.extend(region.wildcard_hostname.filter(|w| !w.is_empty()));
    }
    Ok(hosts)
}

#[derive(serde::Deserialize)]
pub struct LoginQuery {
    redirect: Option<String>,
}

/// `GET /login`: a sign-in form that returns to `redirect` (a same-origin path only).
pub async fn login_page(State(state): State<AppState>, Query(q): Query<LoginQuery>) -> axum::response::Response {
    // Signing in without a `redirect` lands on the dashboard.
    let back = q.redirect.filter(|r| is_local_path(r)).unwrap_or_else(|| "/".into());
    let provider = state.oidc.as_ref().map(|o| o.config.provider_name.as_str());
    crate::html::login_page(&back, provider, !state.config.disable_password_auth)
}

/// A path on this host: starts with one `/`, never `//` or `/\` (scheme-relative).
pub fn is_local_path(p: &str) -> bool {
    p.starts_with('/') && !p.starts_with("//") && !p.starts_with("/\\") && !p.chars().any(char::is_control)
}

pub async fn keys(State(state): State<AppState>, _proxy: ProxyRegion) -> axum::Json<KeysResponse> {
    axum::Json(KeysResponse { keys: state.keys.public.clone() })
}

/// A region redeems only tickets for its own hosts, each at the host it was
/// minted for; the app session is good for the one app the ticket was minted
/// for (its binding) and ends with the user session that signed in.
pub async fn redeem_ticket(
    State(state): State<AppState>,
    ProxyRegion(region): ProxyRegion,
    Json(req): Json<RedeemTicket>,
) -> ApiResult<axum::Json<RedeemTicketResponse>> {
    if !Served::of(&state, &region).serves(&req.host) {
        tracing::warn!(region = %region.name, host = %req.host, "refused a ticket for a host the region does not serve");
        return Err(ApiError::Forbidden(format!("Region {:?} does not serve {:?}.", region.name, req.host)));
    }
    let refused =
        || ApiError::Unauthorized("The login ticket is invalid, expired, already used or for another host.".into());
    let ticket = Token::parse(&req.ticket).map_err(|_| refused())?;
    let redeemed = state.store.redeem_ticket(&ticket, &req.host).await?.ok_or_else(refused)?;
    let (session, expires_at) =
        state.store.create_app_session(redeemed.session_id, redeemed.binding.as_deref()).await?.ok_or_else(refused)?;
    tracing::info!(region = %region.name, host = %redeemed.host, user = %redeemed.user_id, "login ticket redeemed");
    Ok(axum::Json(RedeemTicketResponse { app_session_token: session.encode().expose().to_owned(), expires_at }))
}

/// Denied and signed in → 404 (never reveal that the app exists); denied and
/// anonymous → 401, which the proxy turns into a login redirect. An app
/// session counts only for the app it was signed in for (its ticket's
/// binding): for any other it is no session (401, so the browser fetches a
/// ticket for that app too).
///
/// Path apps are served to their owner only, unless the coordinator runs
/// with `--dangerous-allow-path-app-sharing`; then anyone else gets them in a
/// CSP sandbox (the `sandbox` claim), since every path app of a region shares
/// one origin (on the primary, the dashboard's).
pub async fn issue_app_token(
    State(state): State<AppState>,
    ProxyRegion(region): ProxyRegion,
    Json(req): Json<IssueAppToken>,
) -> ApiResult<axum::Json<IssueAppTokenResponse>> {
    Served::of(&state, &region).check_binding(&req)?;
    let signed_in = match req.app_session_token.as_deref().map(Token::parse) {
        Some(Ok(t)) => state.store.app_session_user(&t, &req.binding).await?,
        _ => None,
    };
    let (user, sid) = signed_in.map_or((None, None), |(user, sid)| (Some(user), sid));
    let app = state.store.resolve_app(&req.app).await?.filter(|a| a.subdomain == req.subdomain);
    let share = |a: &crate::store::ResolvedApp| {
        if a.subdomain || state.config.allow_path_app_sharing {
            a.share
        } else {
            Share::Owner
        }
    };
    let allowed = app.as_ref().is_some_and(|a| match share(a) {
        Share::Public => true,
        Share::Authenticated => user.is_some(),
        Share::Owner => user.as_ref().is_some_and(|u| u.id == a.owner_id),
    });
    let app = match (app, allowed, &user) {
        (Some(app), true, _) => app,
        (_, _, Some(_)) => return Err(ApiError::NotFound("No such app, or you may not open it.".into())),
        (_, _, None) => return Err(ApiError::Unauthorized("Sign in to open this app.".into())),
    };
    let now = chrono::Utc::now();
    // How long the token lasts; its proxy renews it from the app session.
    let lifetime = chrono::Duration::from_std(state.config.app_token_lifetime)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("token lifetime: {e}")))?;
    let owner = user.as_ref().is_some_and(|u| u.id == app.owner_id);
    let claims = AppClaims {
        iss: ISSUER.into(),
        sub: user.map_or_else(|| "anonymous".to_owned(), |u| u.id.to_string()),
        binding: req.binding,
        agent_id: app.agent_id,
        upstream: app.upstream,
        share: app.share,
        sandbox: !req.subdomain && !owner,
        cors_passthru: app.cors == Cors::Passthru,
        dial: Default::default(),
        iat: now.timestamp(),
        nbf: now.timestamp(),
        exp: (now + lifetime).timestamp(),
        sid,
    };
    let token = state.keys.signer.sign(&claims).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(axum::Json(IssueAppTokenResponse { token, expires_at: now + lifetime }))
}

fn see_other(location: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location.to_owned()), (header::CACHE_CONTROL, "no-store".to_owned())])
        .into_response()
}

/// Browser-facing errors are HTML pages with the API's status.
fn error_page(e: ApiError) -> Response {
    let (status, message) = match &e {
        ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
        ApiError::DatabaseUnavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Meridian cannot sign you in right now: its database is unavailable. Try again shortly.".into(),
        ),
        _ => return e.into_response(),
    };
    let body = format!(
        "<!doctype html><title>Meridian</title><h1>{}</h1><p>{}</p>",
        status.as_u16(),
        crate::html::escape(&message)
    );
    (status, Html(body)).into_response()
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_paths() {
        for ok in ["/", "/x?y", "/api/v2/applications/auth-redirect?redirect_uri=http%3A%2F%2Fa"] {
            assert!(super::is_local_path(ok), "{ok}");
        }
        for bad in ["//evil.example", "/\\evil.example", "https://evil.example", "evil", "", "/a\r\nb"] {
            assert!(!super::is_local_path(bad), "{bad:?}");
        }
    }
}
