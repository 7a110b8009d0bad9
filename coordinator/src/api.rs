//! The coordinator's HTTP API: the router and its shared state.
//!
//! - [`auth`]: extractors for the three credentials (user session, admin, proxy token).
//! - [`json`]: a JSON body extractor whose rejections use the API's error format.
//! - [`users`], [`regions`], [`proxies`], [`workspaces`]: the handlers, one file per resource.
//! - [`streams`]: tokens for shell and TCP streams (`meridian ssh`, `port-forward`).
//! - [`apps`]: app login (auth-redirect, tickets) and app tokens; `meridian_regions::redirect` validates where it may send browsers.
//! - [`guard`]: what every request passes first: its `Host`, its `Origin` (CSRF), and security headers on answers.
//! - [`hosts`]: which hosts a region serves; what keeps a proxy token to them.
//! - [`audit`]: the audit log (`GET /api/v2/audit-log`) and how handlers record their changes.
//! - [`connections`]: the connection log (`GET /api/v2/connection-log`) and regions' batches of it.
//! - [`probes`]: `/healthz`, `/healthz-report`, `/latency-check`, `/api/v2/buildinfo`.

mod agents;
mod apps;
pub(crate) mod audit;
pub(crate) mod auth;
pub(crate) mod connections;
mod guard;
mod hosts;
mod json;
mod oidc;
mod probes;
mod proxies;
pub(crate) mod regions;
mod streams;
mod users;
mod workspaces;

use crate::config::Config;
use crate::error::ApiError;
use crate::store::Store;
use axum::routing::{delete, get, post, put};
use axum::Router;
use std::sync::Arc;
use tokio::sync::mpsc;
use uuid::Uuid;

/// What every handler may use.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub config: Arc<Config>,
    /// New replicas are sent here so the health checker polls them at once.
    pub check_now: mpsc::UnboundedSender<Uuid>,
    /// The app-token signing key and the public keys proxies trust.
    pub keys: Arc<crate::keys::Keys>,
    /// Hash of the in-memory token of this process's primary proxy.
    pub primary_token_hash: Arc<Vec<u8>>,
    /// Bumped on every route change any coordinator replica made (see [`crate::routes`]).
    pub route_changes: tokio::sync::watch::Sender<u64>,
    /// Reads many proxies make at once, computed once.
    pub reads: crate::read_cache::ReadCache,
    /// Failed sign-ins per account and client address.
    pub login_limits: Arc<crate::login_limits::LoginLimits>,
    /// The primary region's proxy (its connection log, for `/healthz-report`).
    pub primary_proxy: Arc<meridian_proxy::state::ProxyState>,
    /// Sign-in through the identity provider (`--oidc-issuer-url`), if set up.
    pub oidc: Option<Arc<crate::oidc::Oidc>>,
    /// Seals what must be stored secret (the PKCE verifiers of sign-ins under way).
    pub secrets: Arc<crate::keys::SecretsKey>,
}

/// The API for the public listener when the proxy API has its own
/// (`--internal-listen`): `/api/v2/proxies/...` answers 404 here, so a network
/// policy on the internal port decides who may speak to it.
pub fn public_router(state: AppState, pages: Router<AppState>) -> Router {
    router(state, pages).layer(axum::middleware::from_fn(internal_only))
}

async fn internal_only(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    if req.uri().path().starts_with("/api/v2/proxies/") {
        let message = "The proxy API is served on the coordinator's internal listener (--internal-listen), not here.";
        return ApiError::NotFound(message.into()).into_response();
    }
    next.run(req).await
}

/// The API, with `pages` (the dashboard's, see `crate::dashboard::routes`)
/// served beside it behind the same guard.
pub fn router(state: AppState, pages: Router<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(probes::healthz))
        .route("/healthz-report", get(probes::healthz_report))
        .route("/latency-check", get(probes::latency_check))
        .route("/metrics", get(probes::metrics))
        .route("/api/v2/buildinfo", get(probes::buildinfo))
        .route("/api/v2/users/first", post(users::first))
        .route("/api/v2/users/login", post(users::login))
        .route("/api/v2/users/logout", post(users::logout))
        .route("/api/v2/users/oidc/login", get(oidc::login))
        .route("/api/v2/users/oidc/callback", get(oidc::callback))
        .route("/api/v2/users/authmethods", get(users::auth_methods))
        .route("/api/v2/users/cli-auth", post(oidc::cli_code))
        .route("/api/v2/users/cli-auth/token", post(oidc::cli_token))
        .route("/cli-auth", get(oidc::cli_page))
        .route("/api/v2/users/me", get(users::me))
        .route("/api/v2/users", post(users::create).get(users::list))
        .route("/api/v2/users/{name}/status/{status}", put(users::set_status))
        .route("/api/v2/users/{name}/sessions", get(users::sessions).delete(users::revoke_sessions))
        .route("/api/v2/users/{name}/sessions/{id}", delete(users::revoke_session))
        .route("/api/v2/regions", get(regions::list).post(regions::create))
        .route("/api/v2/regions/{name}", delete(regions::delete).patch(regions::update))
        .route("/api/v2/regions/{name}/regenerate-token", post(regions::regenerate_token))
        .route("/api/v2/workspaces", get(workspaces::list).post(workspaces::create))
        .route("/api/v2/workspaces/{owner}/{name}", delete(workspaces::delete))
        .route("/api/v2/workspaces/{owner}/{name}/stream-token", post(streams::token))
        .route("/api/v2/audit-log", get(audit::list))
        .route("/api/v2/connection-log", get(connections::list))
        .route("/api/v2/applications/auth-redirect", get(apps::auth_redirect))
        .route("/login", get(apps::login_page))
        .route("/api/v2/proxies/me/keys", get(apps::keys))
        .route("/api/v2/proxies/me/redeem-ticket", post(apps::redeem_ticket))
        .route("/api/v2/proxies/me/issue-app-token", post(apps::issue_app_token))
        .route("/api/v2/agents/me/connection-info", get(agents::connection_info))
        .route("/api/v2/agents/me/host-key", post(agents::host_key))
        .route("/api/v2/proxies/me/agent-attach", post(agents::attach))
        .route("/api/v2/proxies/me/agent-detach", post(agents::detach))
        .route("/api/v2/proxies/me/routes", get(agents::routes))
        .route("/api/v2/proxies/me/register", post(proxies::register))
        .route("/api/v2/proxies/me/deregister", post(proxies::deregister))
        .route(
            "/api/v2/proxies/me/connection-log",
            post(connections::ingest).layer(axum::extract::DefaultBodyLimit::max(connections::MAX_BATCH_BODY)),
        )
        .merge(pages)
        .fallback(|| async { ApiError::NotFound("No such API endpoint.".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(json::MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard::guard))
        .layer(axum::middleware::from_fn(guard::close_unread))
        .with_state(state)
}
