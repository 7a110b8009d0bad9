//! `/api/v2/users...`: first-user bootstrap, login, `me`, and admin-created users.

use super::audit::{self, Source};
use super::auth::{client_addr, session_cookie_name, session_tokens, Admin, CurrentUser};
use super::json::Json;
use super::AppState;
use crate::error::{ApiError, ApiResult};
use crate::secret;
use crate::store::Scope;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use meridian_regions::api::{
    CreateUser, Credentials, FirstUserResponse, LoginResponse, SessionList, SessionsRevoked, User, UserList,
    UserSummary,
};
use meridian_regions::name::Name;
use meridian_regions::token::{Secret, Token};

/// `POST /api/v2/users/first`: only while no user exists; the first user is admin.
pub async fn first(State(state): State<AppState>, source: Source, Json(req): Json<Credentials>) -> ApiResult<Response> {
    let (username, hash) = validated(&req.username, req.password).await?;
    let audit = |user: &_| {
        let created = audit::change(Some(user), "user.create", "user", username.as_str(), &source);
        created.with_changes(serde_json::json!({"admin": [null, true], "first": [null, true]}))
    };
    let user = state.store.create_first_user(username.as_str(), &hash, audit).await?;
    let token = state.store.create_session(user.id, Scope::User).await?;
    tracing::info!(user = %user.username, "first user created");
    let body = FirstUserResponse { user: user.into(), session_token: token.encode().expose().to_owned() };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// `POST /api/v2/users/login`: a session token in the body and the
/// `meridian_session` cookie. A session this browser already held ends: every
/// sign-in starts a new one (no session fixation).
///
/// Guessing is limited ([`crate::login_limits`]): past a limit, 429 with
/// `Retry-After` before any password is hashed; with too many sign-ins
/// already waiting for a password check, 503 with `Retry-After: 1`.
pub async fn login(State(state): State<AppState>, parts: Parts, Json(req): Json<Credentials>) -> ApiResult<Response> {
    let refused = || ApiError::Unauthorized("Incorrect username or password.".into());
    if state.config.disable_password_auth {
        let provider = state.oidc.as_ref().map_or("the identity provider", |o| o.config.provider_name.as_str());
        return Err(ApiError::Forbidden(format!("Password sign-in is disabled here: sign in with {provider}.")));
    }
    let client = client_addr(&parts);
    if let Err(limited) = state.login_limits.check(&req.username, client) {
        tracing::warn!(%client, limit = limited.what, "sign-in refused: too many failures");
        return Err(ApiError::TooManyRequests(limited.message(), limited.retry_after));
    }
    let busy = || ApiError::Busy("Too many sign-ins at once; try again in a second.".into());
    if secret::hashing_busy() {
        return Err(busy());
    }
    let user = state.store.user_by_name(&req.username).await?;
    // A user linked to the identity provider has no password: checked like
    // a user that does not exist (the same time spent, never a match).
    let hash = user.as_ref().map(|u| u.password_hash.clone()).filter(|h| h != crate::store::NO_PASSWORD);
    let ok = secret::verify_password(req.password, hash).await.map_err(|secret::Busy| busy())?;
    let source = Source(client.to_string());
    let Some(user) = user.filter(|_| ok) else {
        state.login_limits.failed(&req.username, client);
        // The name tried is kept (bounded: the sign-in limits above cap how
        // many failures an address or an account can make).
        let mut failed = audit::change(None, "user.login_failed", "user", &req.username, &source);
        failed.actor = Some(req.username.clone());
        audit::record(&state, failed).await;
        return Err(refused());
    };
    state.login_limits.succeeded(&req.username, client);
    // Only past the password: a wrong guess learns nothing of the account.
    if state.store.is_suspended(user.id).await? {
        return Err(ApiError::Forbidden("This account is suspended: ask an admin to reactivate it.".into()));
    }
    // Signing in ends the session(s) this browser held (session rotation).
    let _ = end_held_sessions(&state, &parts, None).await?;
    let signed_in = audit::change(Some(&user), "user.login", "user", &user.username, &source);
    let token = state.store.sign_in(user.id, &signed_in).await?;
    let value = token.encode();
    let cookie = session_cookie(&state, value.expose(), None);
    let body = LoginResponse { session_token: value.expose().to_owned() };
    Ok(([(header::SET_COOKIE, cookie)], axum::Json(body)).into_response())
}

/// `POST /api/v2/users/logout`: ends the session (header or cookie) and every
/// app session it signed in, and clears the cookie. 204 even with no live
/// session: the result the caller wants holds either way.
pub async fn logout(State(state): State<AppState>, parts: Parts) -> ApiResult<Response> {
    let source = Source(client_addr(&parts).to_string());
    end_held_sessions(&state, &parts, Some(&source)).await?;
    let cleared = session_cookie(&state, "", Some(0));
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cleared)]).into_response())
}

/// Ends the sessions the request carries: every copy (one may have been
/// planted), each that is a live session with its secret, each recorded as a
/// sign-out from `source` if given; whose they were.
pub(super) async fn end_held_sessions(
    state: &AppState,
    parts: &Parts,
    source: Option<&Source>,
) -> ApiResult<Vec<crate::store::UserRow>> {
    let mut ended = Vec::new();
    for token in session_tokens(state, parts).iter().filter_map(|raw| Token::parse(raw).ok()) {
        let audit = |user: &crate::store::UserRow| {
            source.map(|s| audit::change(Some(user), "user.logout", "user", &user.username, s))
        };
        if let Some(user) = state.store.end_session(&token, audit).await? {
            tracing::info!(session = %token.id, "signed out");
            ended.push(user);
        }
    }
    Ok(ended)
}

/// The `meridian_session` cookie: HttpOnly, SameSite=Lax, Secure over HTTPS,
/// for this host only (no `Domain`, so app hosts never get it).
pub(super) fn session_cookie(state: &AppState, value: &str, max_age_secs: Option<i64>) -> String {
    let secure = state.config.access_url.scheme() == "https";
    let mut c = cookie::Cookie::build((session_cookie_name(state), value.to_owned()))
        .path("/")
        .http_only(true)
        .secure(secure)
        .same_site(cookie::SameSite::Lax);
    if let Some(s) = max_age_secs {
        c = c.max_age(cookie::time::Duration::seconds(s));
    }
    c.build().to_string()
}

/// `GET /api/v2/users/authmethods`: how one may sign in here (for the CLI
/// and the sign-in page).
pub async fn auth_methods(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    let oidc = state.oidc.as_ref().map(|o| serde_json::json!({"name": o.config.provider_name}));
    axum::Json(serde_json::json!({"password": !state.config.disable_password_auth, "oidc": oidc}))
}

/// `GET /api/v2/users/me`.
pub async fn me(CurrentUser(user): CurrentUser) -> axum::Json<User> {
    axum::Json(user.into())
}

/// `POST /api/v2/users` (admins only).
pub async fn create(
    State(state): State<AppState>,
    Admin(admin): Admin,
    source: Source,
    Json(req): Json<CreateUser>,
) -> ApiResult<(StatusCode, axum::Json<User>)> {
    let (username, hash) = validated(&req.username, req.password).await?;
    let created = audit::change(Some(&admin), "user.create", "user", username.as_str(), &source)
        .with_changes(serde_json::json!({"admin": [null, req.admin]}));
    let user = state.store.create_user(username.as_str(), &hash, req.admin, &created).await?;
    tracing::info!(user = %user.username, admin = user.admin, by = %admin.username, "user created");
    Ok((StatusCode::CREATED, axum::Json(user.into())))
}

async fn validated(username: &str, password: Secret) -> ApiResult<(Name, String)> {
    let name = Name::parse(username).map_err(|e| ApiError::BadRequest(format!("Invalid username: {e}.")))?;
    if password.expose().chars().count() < secret::MIN_PASSWORD_LEN {
        return Err(ApiError::BadRequest(format!(
            "Password must be at least {} characters.",
            secret::MIN_PASSWORD_LEN
        )));
    }
    Ok((name, secret::hash_password(password).await?))
}

/// `GET /api/v2/users` (admins only): every user and how they stand.
pub async fn list(State(state): State<AppState>, Admin(_): Admin) -> ApiResult<axum::Json<UserList>> {
    Ok(axum::Json(UserList { users: state.store.user_summaries().await? }))
}

/// The user named `name`, or a 404 naming it.
async fn named(state: &AppState, name: &str) -> ApiResult<crate::store::UserRow> {
    state.store.user_by_name(name).await?.ok_or_else(|| ApiError::NotFound(format!("No user named {name:?}.")))
}

/// `PUT /api/v2/users/{name}/status/suspend` and `…/status/activate`
/// (admins only, as Coder's). Suspending ends every session of theirs, and
/// every region refuses the tokens they hold and cuts what those opened
/// (apps, WebSockets, shells, forwarded ports), through the route feed
/// regions follow; an admin cannot suspend themselves. Reactivated, they may
/// sign in again (their old sessions stay ended).
pub async fn set_status(
    State(state): State<AppState>,
    Admin(admin): Admin,
    source: Source,
    Path((name, status)): Path<(String, String)>,
) -> ApiResult<axum::Json<UserSummary>> {
    let suspend = match status.as_str() {
        "suspend" => true,
        "activate" => false,
        _ => return Err(ApiError::NotFound(format!("No status change {status:?}: suspend or activate."))),
    };
    let user = named(&state, &name).await?;
    if suspend && user.id == admin.id {
        return Err(ApiError::Conflict("You cannot suspend yourself; ask another admin.".into()));
    }
    let (action, change) =
        if suspend { ("user.suspend", ["active", "suspended"]) } else { ("user.activate", ["suspended", "active"]) };
    let record = audit::change(Some(&admin), action, "user", &user.username, &source)
        .with_changes(serde_json::json!({ "status": change }));
    if state.store.set_suspended(user.id, suspend, &record).await? {
        tracing::info!(user = %user.username, by = %admin.username, status = change[1], "user status changed");
    }
    summary(&state, &user.username).await
}

async fn summary(state: &AppState, name: &str) -> ApiResult<axum::Json<UserSummary>> {
    let summary = state.store.user_summary(name).await?;
    summary.map(axum::Json).ok_or_else(|| ApiError::NotFound(format!("No user named {name:?}.")))
}

/// Admins may see and end anyone's sessions; a user their own; anyone else's → 404.
async fn sessions_owner(
    state: &AppState,
    caller: &crate::store::UserRow,
    name: &str,
) -> ApiResult<crate::store::UserRow> {
    if caller.username == name {
        return Ok(caller.clone());
    }
    if !caller.admin {
        return Err(ApiError::NotFound(format!("No user named {name:?}.")));
    }
    named(state, name).await
}

/// `GET /api/v2/users/{name}/sessions`: their live sign-in sessions.
pub async fn sessions(
    State(state): State<AppState>,
    CurrentUser(caller): CurrentUser,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<SessionList>> {
    let user = sessions_owner(&state, &caller, &name).await?;
    Ok(axum::Json(SessionList { sessions: state.store.sessions_of(user.id).await? }))
}

/// `DELETE /api/v2/users/{name}/sessions`: signs them out everywhere: every
/// session ends, and regions refuse the tokens issued before now and cut
/// what those opened.
pub async fn revoke_sessions(
    State(state): State<AppState>,
    CurrentUser(caller): CurrentUser,
    source: Source,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<SessionsRevoked>> {
    let user = sessions_owner(&state, &caller, &name).await?;
    let record = audit::change(Some(&caller), "user.sessions_revoke", "user", &user.username, &source);
    let revoked = state.store.revoke_sessions(user.id, &record).await?;
    tracing::info!(user = %user.username, by = %caller.username, revoked, "sessions revoked");
    Ok(axum::Json(SessionsRevoked { revoked }))
}

/// `DELETE /api/v2/users/{name}/sessions/{id}`: ends one session and the app
/// sessions under it (tokens regions hold from it run out with their
/// lifetime; revoke them all for an immediate cut).
pub async fn revoke_session(
    State(state): State<AppState>,
    CurrentUser(caller): CurrentUser,
    source: Source,
    Path((name, id)): Path<(String, uuid::Uuid)>,
) -> ApiResult<StatusCode> {
    let user = sessions_owner(&state, &caller, &name).await?;
    let record = audit::change(Some(&caller), "user.session_revoke", "user", &user.username, &source)
        .with_changes(serde_json::json!({"session": [id, null]}));
    if !state.store.revoke_session(user.id, id, &record).await? {
        return Err(ApiError::NotFound(format!("{name} has no live session {id}.")));
    }
    Ok(StatusCode::NO_CONTENT)
}
