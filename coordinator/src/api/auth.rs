//! Credential extractors. Each reads one credential, checks it against the
//! store and rejects with 401 (missing or invalid) or 403 (valid, not allowed).

use super::AppState;
use crate::error::ApiError;
use crate::store::{RegionRow, Scope, UserRow};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use meridian_regions::headers::{self, FORWARDED_BY};
use meridian_regions::token::{Secret, Token};
use std::sync::Arc;

/// A signed-in user, from the `Meridian-Session-Token` header or the
/// `meridian_session` cookie.
pub struct CurrentUser(pub UserRow);

/// The signed-in user and the id of the session they are signed in with.
pub struct CurrentSession(pub UserRow, pub uuid::Uuid);

/// A signed-in admin.
pub struct Admin(pub UserRow);

/// The agent whose token came in `Meridian-Agent-Token`.
pub struct AgentIdentity(pub uuid::Uuid);

impl FromRequestParts<AppState> for AgentIdentity {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let refused = || {
            ApiError::Unauthorized("The agent token is invalid: its workspace was deleted, or it is mistyped.".into())
        };
        let raw = header(parts, headers::AGENT_TOKEN).ok_or_else(refused)?;
        let token = Token::parse(&raw).map_err(|_| refused())?;
        let id = state.store.agent_for_token(&token).await?.ok_or_else(refused)?;
        Ok(AgentIdentity(id))
    }
}

/// The region whose proxy token came in `Meridian-Proxy-Token`.
pub struct ProxyRegion(pub RegionRow);

/// The signed-in user and their session's id, if the request carries a
/// valid session; `Err` only when the check itself failed (the database is
/// down).
pub async fn optional_user(parts: &Parts, state: &AppState) -> Result<Option<(UserRow, uuid::Uuid)>, ApiError> {
    match CurrentUser::check(parts, state).await {
        Ok((user, session)) => Ok(Some((user, session))),
        Err(ApiError::Unauthorized(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The session tokens a request carries: the `Meridian-Session-Token`
/// header, else every copy of the session cookie (at most
/// [`headers::MAX_COOKIE_COPIES`]). Over HTTPS the cookie is
/// `__Host-meridian_session`, which no other host can set; over HTTP a
/// sibling app host can plant a second `meridian_session` on a parent
/// domain, and the copy that is a live session is used, so a planted one
/// never locks anyone out.
pub fn session_tokens(state: &AppState, parts: &Parts) -> Vec<String> {
    if let Some(raw) = header(parts, headers::SESSION_TOKEN) {
        return vec![raw];
    }
    let name = session_cookie_name(state);
    headers::cookie_copies(&parts.headers, name).map(str::to_owned).collect()
}

/// The session cookie's name at this coordinator (see [`headers::cookie_name`]).
pub fn session_cookie_name(state: &AppState) -> &'static str {
    headers::cookie_name(headers::SESSION_COOKIE, state.config.access_url.scheme() == "https")
}

impl CurrentUser {
    /// The first of the request's session tokens that is a live session.
    async fn check(parts: &Parts, state: &AppState) -> Result<(UserRow, uuid::Uuid), ApiError> {
        let raws = session_tokens(state, parts);
        if raws.is_empty() {
            return Err(ApiError::Unauthorized("Sign in first: no session token was sent.".into()));
        }
        for token in raws.iter().filter_map(|raw| Token::parse(raw).ok()) {
            if let Some(user) = state.store.session_user(&token, Scope::User).await? {
                return Ok((user, token.id));
            }
        }
        Err(ApiError::Unauthorized("The session token is invalid or has expired; sign in again.".into()))
    }
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Self::check(parts, state).await.map(|(user, _)| CurrentUser(user))
    }
}

impl FromRequestParts<AppState> for CurrentSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        CurrentUser::check(parts, state).await.map(|(user, session)| CurrentSession(user, session))
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let CurrentUser(user) = CurrentUser::from_request_parts(parts, state).await?;
        if !user.admin {
            return Err(ApiError::Forbidden("Only admins may do this.".into()));
        }
        Ok(Admin(user))
    }
}

impl FromRequestParts<AppState> for ProxyRegion {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let raw = header(parts, headers::PROXY_TOKEN).ok_or_else(|| {
            ApiError::Unauthorized(format!("No proxy token: send it in the {} header.", headers::PROXY_TOKEN))
        })?;
        let token =
            Token::parse(&raw).map_err(|e| ApiError::Unauthorized(format!("The proxy token is malformed: {e}.")))?;
        // This process's own primary proxy holds an in-memory token.
        if token.id == crate::primary::PRIMARY_REGION_ID
            && crate::secret::secret_matches(token.secret.expose(), &state.primary_token_hash)
        {
            let primary = state.store.region_by_id(token.id).await?;
            return primary.map(ProxyRegion).ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no primary region")));
        }
        let region = state.store.region_for_token(&token).await?.ok_or_else(|| {
            ApiError::Unauthorized(
                "The proxy token is not valid: its region was deleted or the token was regenerated.".into(),
            )
        })?;
        Ok(ProxyRegion(region))
    }
}

fn header(parts: &Parts, name: &str) -> Option<String> {
    parts.headers.get(name)?.to_str().ok().map(str::to_owned)
}

/// On a listener meant for the primary proxy alone: the proof (a random
/// secret of this process, in [`FORWARDED_BY`]) that the primary proxy sent
/// a request, so its `X-Forwarded-For` can be trusted. Any local process can
/// reach a loopback listener; none but the primary proxy knows the proof.
#[derive(Clone)]
pub struct Forwarded(Arc<Secret>);

impl Forwarded {
    pub fn new() -> Self {
        Self(Arc::new(crate::secret::random_secret()))
    }

    /// The proof, for the primary proxy to send.
    pub fn secret(&self) -> Secret {
        Secret::clone(&self.0)
    }

    /// Whether the request carries the proof (compared in constant time).
    fn proven(&self, parts: &Parts) -> bool {
        parts.headers.get(FORWARDED_BY).and_then(|v| v.to_str().ok()).is_some_and(|v| self.0.matches(v))
    }
}

/// The address of the client a request came from: on the listeners meant
/// for the primary proxy, with its proof, the one it put in
/// `X-Forwarded-For` (it replaces whatever the client sent); otherwise the
/// connection's peer.
pub fn client_addr(parts: &Parts) -> std::net::IpAddr {
    let peer = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let forwarded =
        parts.extensions.get::<Option<Forwarded>>().and_then(Option::as_ref).is_some_and(|f| f.proven(parts));
    let named = || {
        let last = parts.headers.get_all("x-forwarded-for").iter().next_back()?;
        last.to_str().ok()?.rsplit(',').next()?.trim().parse().ok()
    };
    forwarded.then(named).flatten().or(peer).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into())
}
