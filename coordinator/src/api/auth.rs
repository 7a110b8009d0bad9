//! Credential extractors. Each reads one credential, checks it against the
//! store and rejects with 401 (missing or invalid) or 403 (valid, not allowed).

use super::AppState;
use crate::error::ApiError;
use crate::store::{RegionRow, Scope, UserRow};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use meridian_regions::headers;
use meridian_regions::token::Token;

/// A signed-in user, from the `Meridian-Session-Token` header or the
/// `meridian_session` cookie.
pub struct CurrentUser(pub UserRow);

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
/// down) or the session cookie was sent twice.
pub async fn optional_user(parts: &Parts, state: &AppState) -> Result<Option<(UserRow, uuid::Uuid)>, ApiError> {
    match CurrentUser::check(parts, state).await {
        Ok((user, session)) => Ok(Some((user, session))),
        Err(ApiError::Unauthorized(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The session token a request carries: the `Meridian-Session-Token` header,
/// else the `meridian_session` cookie (which must not be sent twice: a second
/// one was planted, and which one a server reads first is not the user's choice).
pub fn session_token(parts: &Parts) -> Result<Option<String>, ApiError> {
    if let Some(raw) = header(parts, headers::SESSION_TOKEN) {
        return Ok(Some(raw));
    }
    headers::unique_cookie(&parts.headers, headers::SESSION_COOKIE)
        .map(|c| c.map(str::to_owned))
        .map_err(|_| ApiError::BadRequest(format!("The {} cookie was sent more than once.", headers::SESSION_COOKIE)))
}

impl CurrentUser {
    async fn check(parts: &Parts, state: &AppState) -> Result<(UserRow, uuid::Uuid), ApiError> {
        let raw = session_token(parts)?
            .ok_or_else(|| ApiError::Unauthorized("Sign in first: no session token was sent.".into()))?;
        let invalid = || ApiError::Unauthorized("The session token is invalid or has expired; sign in again.".into());
        let token = Token::parse(&raw).map_err(|_| invalid())?;
        let user = state.store.session_user(&token, Scope::User).await?.ok_or_else(invalid)?;
        Ok((user, token.id))
    }
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Self::check(parts, state).await.map(|(user, _)| CurrentUser(user))
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

/// Whether a listener hears only the primary proxy (its `X-Forwarded-For` is then trusted).
#[derive(Debug, Clone, Copy)]
pub struct Forwarded(pub bool);

/// The address of the client a request came from: on the listeners only the
/// primary proxy speaks to, the one it put in `X-Forwarded-For` (it replaces
/// whatever the client sent); elsewhere the connection's peer.
pub fn client_addr(parts: &Parts) -> std::net::IpAddr {
    let peer = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let forwarded = parts.extensions.get::<Forwarded>().is_some_and(|f| f.0);
    let named = || {
        let last = parts.headers.get_all("x-forwarded-for").iter().next_back()?;
        last.to_str().ok()?.rsplit(',').next()?.trim().parse().ok()
    };
    forwarded.then(named).flatten().or(peer).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into())
}
