//! `/api/v2/users/oidc/{login,callback}`: signing in through the identity
//! provider (`--oidc-issuer-url`), as a browser does. Errors are pages a
//! person understands, with the status that fits: the provider down (503,
//! naming it), an ID token that does not verify or a provider that refused
//! (401), a state used twice or from another browser (400), a user the
//! policy keeps out (403, naming why), a name taken by another user (409).

use super::audit::{self, Source};
use super::auth::client_addr;
use super::users::{end_held_sessions, session_cookie};
use super::AppState;
use crate::error::ApiError;
use crate::oidc::{Identity, OidcError};
use crate::store::UserRow;
use axum::extract::{Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use meridian_regions::name::Name;

/// How long a sign-in at the provider may take.
const FLOW_LIFETIME: chrono::Duration = chrono::Duration::minutes(10);
/// The cookie binding a sign-in under way to the browser that began it.
const STATE_COOKIE: &str = "meridian_oidc_state";
const COOKIE_PATH: &str = "/api/v2/users/oidc";

/// A page explaining why signing in failed.
fn page(status: StatusCode, message: &str) -> Response {
    let main = format!(
        "<main class=\"narrow\"><h1>Sign-in failed</h1><p id=\"reason\">{}</p>\
         <p><a href=\"/login\">Back to the sign-in page</a></p></main>",
        crate::html::escape(message)
    );
    let mut resp =
        crate::html::with_policy(Html(crate::html::shell("Sign-in failed", None, &main)).into_response(), &[]);
    *resp.status_mut() = status;
    resp
}

fn failed(e: &OidcError) -> Response {
    match e {
        OidcError::Unavailable(m) => page(StatusCode::SERVICE_UNAVAILABLE, m),
        OidcError::Rejected(m) => page(StatusCode::UNAUTHORIZED, m),
    }
}

fn api_failed(e: ApiError) -> Response {
    tracing::warn!(error = %e, "OIDC sign-in failed");
    match e {
        ApiError::Conflict(m) => page(StatusCode::CONFLICT, &m),
        ApiError::Forbidden(m) => page(StatusCode::FORBIDDEN, &m),
        ApiError::DatabaseUnavailable(_) => {
            page(StatusCode::SERVICE_UNAVAILABLE, "Meridian cannot sign you in right now: its database is unavailable.")
        }
        _ => page(StatusCode::INTERNAL_SERVER_ERROR, "Meridian could not complete the sign-in; try again."),
    }
}

fn state_cookie(state: &AppState, value: &str, max_age: chrono::Duration) -> String {
    cookie::Cookie::build((STATE_COOKIE, value.to_owned()))
        .path(COOKIE_PATH)
        .http_only(true)
        .secure(state.config.access_url.scheme() == "https")
        .same_site(cookie::SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(max_age.num_seconds()))
        .build()
        .to_string()
}

#[derive(serde::Deserialize)]
pub struct LoginQuery {
    redirect: Option<String>,
}

/// `GET /api/v2/users/oidc/login?redirect=/path`: to the provider.
pub async fn login(State(state): State<AppState>, Query(q): Query<LoginQuery>) -> Response {
    let Some(oidc) = state.oidc.clone() else {
        return page(StatusCode::NOT_FOUND, "Signing in through an identity provider is not set up here.");
    };
    let back = q.redirect.filter(|r| super::apps::is_local_path(r)).unwrap_or_else(|| "/".into());
    let (url, flow) = match oidc.start().await {
        Ok(started) => started,
        Err(e) => {
            tracing::warn!(error = %e, "cannot begin an OIDC sign-in");
            return failed(&e);
        }
    };
    let sealed = match state.secrets.seal(flow.verifier.as_bytes()) {
        Ok(s) => s,
        Err(e) => return api_failed(ApiError::Internal(e)),
    };
    let hash = crate::secret::hash_secret(&flow.state);
    let expires = chrono::Utc::now() + FLOW_LIFETIME;
    if let Err(e) = state.store.save_oidc_flow(&hash, &flow.nonce, &sealed, &back, expires).await {
        return api_failed(e);
    }
    let cookie = state_cookie(&state, &flow.state, FLOW_LIFETIME);
    (StatusCode::SEE_OTHER, [(header::LOCATION, url.to_string()), (header::SET_COOKIE, cookie)]).into_response()
}

#[derive(serde::Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /api/v2/users/oidc/callback`: the provider sends the browser back
/// here; on success it lands where it began, signed in.
pub async fn callback(State(state): State<AppState>, parts: Parts, Query(q): Query<CallbackQuery>) -> Response {
    let Some(oidc) = state.oidc.clone() else {
        return page(StatusCode::NOT_FOUND, "Signing in through an identity provider is not set up here.");
    };
    if let Some(error) = &q.error {
        let detail = q.error_description.as_deref().map(|d| format!(": {d}")).unwrap_or_default();
        let message = format!("{} did not sign you in ({error}{detail}).", oidc.config.provider_name);
        return page(StatusCode::UNAUTHORIZED, &message);
    }
    let (Some(code), Some(flow_state)) = (q.code, q.state) else {
        return page(StatusCode::BAD_REQUEST, "The identity provider's answer has no code or state.");
    };
    let flow = match state.store.take_oidc_flow(&crate::secret::hash_secret(&flow_state)).await {
        Ok(Some(flow)) if !flow.expired => flow,
        Ok(Some(_)) => return page(StatusCode::BAD_REQUEST, "This sign-in took more than 10 minutes; sign in again."),
        Ok(None) => {
            return page(
                StatusCode::BAD_REQUEST,
                "This sign-in was already completed or is unknown (a state is good once); sign in again.",
            )
        }
        Err(e) => return api_failed(e),
    };
    // The browser that began the sign-in must be the one finishing it (the
    // flow is spent either way: a state is good once).
    let held = meridian_regions::headers::cookie_copies(&parts.headers, STATE_COOKIE).next().unwrap_or_default();
    if !crate::secret::secret_matches(&flow_state, &crate::secret::hash_secret(held)) {
        return page(
            StatusCode::BAD_REQUEST,
            "This sign-in was begun in another browser; sign in again from the start.",
        );
    }
    let verifier = match state.secrets.open(&flow.verifier_sealed).map(String::from_utf8) {
        Ok(Ok(v)) => v,
        _ => return page(StatusCode::BAD_REQUEST, "This sign-in cannot be completed here; sign in again."),
    };
    let identity = match oidc.finish(code, flow.nonce, verifier).await {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "OIDC sign-in refused");
            return failed(&e);
        }
    };
    let source = Source(client_addr(&parts).to_string());
    let user = match admit(&state, &identity, &source).await {
        Ok(user) => user,
        Err(e) => return api_failed(e),
    };
    // Kept to ask the provider, on a schedule, whether the user is still signed in there.
    if let Some(refresh) = &identity.refresh {
        let saved = match state.secrets.seal(refresh.as_bytes()) {
            Ok(sealed) => state.store.save_refresh(user.id, &sealed).await,
            Err(e) => Err(ApiError::Internal(e)),
        };
        if let Err(e) = saved {
            return api_failed(e);
        }
    }
    // Signing in ends the session(s) this browser held (session rotation).
    if let Err(e) = end_held_sessions(&state, &parts, None).await {
        return api_failed(e);
    }
    let signed_in = audit::change(Some(&user), "user.login", "user", &user.username, &source)
        .with_changes(serde_json::json!({"method": [null, "oidc"]}));
    let token = match state.store.sign_in(user.id, &signed_in).await {
        Ok(t) => t,
        Err(e) => return api_failed(e),
    };
    tracing::info!(user = %user.username, "signed in through the identity provider");
    let session = session_cookie(&state, token.encode().expose(), None);
    let cleared = state_cookie(&state, "", chrono::Duration::zero());
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, flow.redirect)]).into_response();
    for c in [session, cleared] {
        if let Ok(v) = header::HeaderValue::from_str(&c) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// The Meridian user `identity` signs in as, after the policy: allowed
/// e-mail domains and groups (someone who left the allowed groups is
/// suspended), the role the groups give, created at the first sign-in.
async fn admit(state: &AppState, identity: &Identity, source: &Source) -> Result<UserRow, ApiError> {
    let config = &state.oidc.as_ref().ok_or_else(|| ApiError::NotFound("no OIDC".into()))?.config;
    if !config.allowed_email_domains.is_empty() {
        let email = identity.email.as_deref().unwrap_or_default();
        let domain = email.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
        if identity.email_verified == Some(false) || !config.allowed_email_domains.contains(&domain) {
            return Err(ApiError::Forbidden(format!(
                "Your e-mail address ({}) is not a verified one in a domain allowed here ({}).",
                if email.is_empty() { "none given" } else { email },
                config.allowed_email_domains.join(", ")
            )));
        }
    }
    let existing = state.store.user_by_identity(&identity.issuer, &identity.subject).await?;
    let in_any = |groups: &[String]| identity.groups.iter().any(|g| groups.contains(g));
    if !config.allowed_groups.is_empty() && !in_any(&config.allowed_groups) {
        if let Some(user) = &existing {
            let mut record = audit::change(None, "user.suspend", "user", &user.username, source).with_changes(
                serde_json::json!({"status": ["active", "suspended"], "why": [null, "left the allowed groups"]}),
            );
            record.actor = Some("identity provider".into());
            if state.store.set_suspended(user.id, true, &record).await? {
                tracing::info!(user = %user.username, "suspended: no longer in an allowed group");
            }
        }
        return Err(ApiError::Forbidden(format!(
            "You are not in a group allowed to sign in here (allowed: {}; yours: {}).",
            config.allowed_groups.join(", "),
            if identity.groups.is_empty() { "none".to_owned() } else { identity.groups.join(", ") }
        )));
    }
    let admin = (!config.admin_groups.is_empty()).then(|| in_any(&config.admin_groups));
    let user = match existing {
        Some(user) => {
            if state.store.is_suspended(user.id).await? {
                return Err(ApiError::Forbidden("This account is suspended: ask an admin to reactivate it.".into()));
            }
            match admin {
                Some(admin) if admin != user.admin => {
                    let mut record = audit::change(None, "user.update", "user", &user.username, source)
                        .with_changes(serde_json::json!({"admin": [user.admin, admin]}));
                    record.actor = Some("identity provider".into());
                    state.store.set_admin(user.id, admin, &record).await?;
                    tracing::info!(user = %user.username, admin, "role changed by the provider's groups");
                    UserRow { admin, ..user }
                }
                _ => user,
            }
        }
        None => {
            let claimed = identity
                .username
                .clone()
                .or_else(|| identity.email.as_deref().and_then(|e| e.split('@').next()).map(str::to_owned))
                .unwrap_or_default();
            let name = Name::parse(&crate::oidc::username_from(&claimed)).map_err(|e| {
                ApiError::Forbidden(format!(
                    "The identity provider names you {claimed:?}, which cannot be made a Meridian username ({e})."
                ))
            })?;
            let admin = admin.unwrap_or(false);
            let created = audit::change(None, "user.create", "user", name.as_str(), source)
                .with_changes(serde_json::json!({"admin": [null, admin], "login_type": [null, "oidc"]}));
            let mut created = created;
            created.actor = Some("identity provider".into());
            let user = state
                .store
                .create_oidc_user(name.as_str(), admin, &identity.issuer, &identity.subject, &created)
                .await?;
            tracing::info!(user = %user.username, admin, "user created at their first sign-in through the provider");
            user
        }
    };
    Ok(user)
}

/// How long a code for `meridian login` is good.
const CLI_CODE_LIFETIME: chrono::Duration = chrono::Duration::minutes(2);

#[derive(serde::Deserialize)]
pub struct CliCodeRequest {
    /// base64url(SHA-256(verifier)), as PKCE's S256.
    challenge: String,
}

/// A PKCE S256 challenge: 43 characters of base64url.
fn is_challenge(c: &str) -> bool {
    c.len() == 43 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `POST /api/v2/users/cli-auth {challenge}` (signed in, from the
/// dashboard's origin): a one-time code for `meridian login`, good for 2
/// minutes and only with the verifier behind `challenge`.
pub async fn cli_code(
    State(state): State<AppState>,
    super::auth::CurrentUser(user): super::auth::CurrentUser,
    super::json::Json(req): super::json::Json<CliCodeRequest>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    if !is_challenge(&req.challenge) {
        return Err(ApiError::BadRequest("challenge must be a PKCE S256 challenge (43 base64url characters).".into()));
    }
    let code = crate::secret::random_secret();
    let hash = crate::secret::hash_secret(code.expose());
    state.store.save_cli_code(&hash, user.id, &req.challenge, chrono::Utc::now() + CLI_CODE_LIFETIME).await?;
    Ok(axum::Json(serde_json::json!({"code": code.expose()})))
}

#[derive(serde::Deserialize)]
pub struct CliTokenRequest {
    code: meridian_regions::token::Secret,
    verifier: meridian_regions::token::Secret,
}

/// `POST /api/v2/users/cli-auth/token {code, verifier}`: the CLI's session,
/// once: the code must be live and the verifier the one its challenge came from.
pub async fn cli_token(
    State(state): State<AppState>,
    source: Source,
    super::json::Json(req): super::json::Json<CliTokenRequest>,
) -> Result<axum::Json<meridian_regions::api::LoginResponse>, ApiError> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let refused = || ApiError::BadRequest("The code is unknown, used, or expired: run `meridian login` again.".into());
    let (user, challenge, expired) =
        state.store.take_cli_code(&crate::secret::hash_secret(req.code.expose())).await?.ok_or_else(refused)?;
    if expired {
        return Err(refused());
    }
    let derived = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(req.verifier.expose()));
    if !bool::from(subtle::ConstantTimeEq::ct_eq(derived.as_bytes(), challenge.as_bytes())) {
        return Err(ApiError::BadRequest("The code was not made for this CLI (PKCE verifier mismatch).".into()));
    }
    if state.store.is_suspended(user.id).await? {
        return Err(ApiError::Forbidden("This account is suspended: ask an admin to reactivate it.".into()));
    }
    let record = audit::change(Some(&user), "user.login", "user", &user.username, &source)
        .with_changes(serde_json::json!({"method": [null, "cli"]}));
    let token = state.store.sign_in(user.id, &record).await?;
    tracing::info!(user = %user.username, "signed the CLI in");
    Ok(axum::Json(meridian_regions::api::LoginResponse { session_token: token.encode().expose().to_owned() }))
}

#[derive(serde::Deserialize)]
pub struct CliPageQuery {
    challenge: Option<String>,
    callback: Option<String>,
    state: Option<String>,
}

/// Where the page may send the code: the CLI's own listener on this
/// machine's loopback, over plain HTTP, never another host.
fn loopback_callback(callback: &str) -> bool {
    url::Url::parse(callback).is_ok_and(|u| {
        u.scheme() == "http"
            && u.port().is_some()
            && matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"))
            && u.username().is_empty()
            && u.password().is_none()
    })
}

/// `GET /cli-auth?challenge=…[&callback=…&state=…]`: once signed in, a
/// button that signs the CLI in: the code goes to the CLI's loopback
/// listener (`callback`), or is shown to paste into the CLI.
pub async fn cli_page(
    user: Result<super::auth::CurrentUser, ApiError>,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
    Query(q): Query<CliPageQuery>,
) -> Response {
    let user = match user {
        Ok(super::auth::CurrentUser(u)) => u,
        Err(ApiError::Unauthorized(_)) => {
            let here = uri.path_and_query().map_or("/cli-auth", |p| p.as_str());
            let back: String = url::form_urlencoded::byte_serialize(here.as_bytes()).collect();
            return axum::response::Redirect::to(&format!("/login?redirect={back}")).into_response();
        }
        Err(e) => return e.into_response(),
    };
    let Some(challenge) = q.challenge.filter(|c| is_challenge(c)) else {
        return page(StatusCode::BAD_REQUEST, "This link has no valid PKCE challenge: run `meridian login` again.");
    };
    if q.callback.as_deref().is_some_and(|c| !loopback_callback(c)) {
        return page(StatusCode::BAD_REQUEST, "The CLI's callback must be http://127.0.0.1:PORT/… on this machine.");
    }
    let e = crate::html::escape;
    let main = format!(
        "<main class=\"narrow\"><h1>Sign in the Meridian CLI</h1>\
         <p>A <code>meridian login</code> on your machine asks to act as <strong>{}</strong>. \
         Only go on if you started it just now.</p>\
         <div id=\"cli-auth\" data-challenge=\"{}\" data-callback=\"{}\" data-state=\"{}\">\
         <button type=\"button\" id=\"approve\">Sign in the CLI as {}</button></div>\
         <p id=\"code-box\" hidden>Paste this code into the CLI (good for 2 minutes): <code id=\"code\"></code></p>\
         <p id=\"error\" class=\"error\" role=\"alert\"></p></main>",
        e(&user.username),
        e(&challenge),
        e(q.callback.as_deref().unwrap_or_default()),
        e(q.state.as_deref().unwrap_or_default()),
        e(&user.username),
    );
    let body = crate::html::shell("Sign in the CLI", None, &main)
        .replace("</head>", "<script src=\"/assets/cli-auth.js\" defer></script></head>");
    // The page may send the browser on to the CLI's loopback listener.
    crate::html::with_policy(Html(body).into_response(), &[])
}
