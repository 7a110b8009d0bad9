//! The dashboard: HTML pages at the access URL for users and operators.
//!
//! - `/` the signed-in user's workspaces, their agents and app links through
//!   the region this browser chose; `/regions` every region with its health
//!   and the latency this browser measures to it, and the region picker;
//!   `/admin` regions, their replicas and tokens, users, and the audit log (admins only:
//!   members get 403); `/connections` the connection log (admins everyone's, members
//!   their own); `/login` the sign-in page.
//! - Each page is a small HTML shell from this file; `assets/dashboard.js`
//!   fills it from the JSON API, so every action a page offers is an API call
//!   a test can make too. Assets are compiled into the binary (no build step).
//! - Security: pages send a Content-Security-Policy with no inline script or
//!   style and `frame-ancestors 'none'`; `connect-src` names the regions'
//!   origins (for `/latency-check`). State changes go through the API, whose
//!   guard refuses a cookie-authenticated request that names no `Origin` or a
//!   foreign one (`api/guard.rs`). Pages are served only on the coordinator's
//!   own hosts, never on an app host (the primary proxy routes app hosts to apps).

use crate::api::auth::CurrentUser;
use crate::api::AppState;
use crate::error::ApiError;
use crate::html::{escape, origin, shell, with_policy};
use axum::extract::{OriginalUri, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};

const SCRIPT: &str = include_str!("../assets/dashboard.js");
const LOGIN_SCRIPT: &str = include_str!("../assets/login.js");
const CLI_AUTH_SCRIPT: &str = include_str!("../assets/cli-auth.js");
const STYLE: &str = include_str!("../assets/dashboard.css");
const TERMINAL_SCRIPT: &str = include_str!("../assets/terminal.js");
/// xterm.js, vendored from npm unmodified (`assets/vendor/xterm/README.md`).
const XTERM_SCRIPT: &str = include_str!("../assets/vendor/xterm/xterm.js");
const XTERM_STYLE: &str = include_str!("../assets/vendor/xterm/xterm.css");

/// The dashboard's pages and assets, for `crate::api::router`.
pub fn routes() -> axum::Router<AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/", get(home))
        .route("/regions", get(regions))
        .route("/admin", get(admin))
        .route("/connections", get(connections))
        .route("/terminal", get(terminal))
        .route("/assets/{file}", get(asset))
}

/// `GET /assets/{file}`.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "dashboard.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "login.js" => (LOGIN_SCRIPT, "text/javascript; charset=utf-8"),
        "cli-auth.js" => (CLI_AUTH_SCRIPT, "text/javascript; charset=utf-8"),
        "dashboard.css" => (STYLE, "text/css; charset=utf-8"),
        "terminal.js" => (TERMINAL_SCRIPT, "text/javascript; charset=utf-8"),
        "xterm.js" => (XTERM_SCRIPT, "text/javascript; charset=utf-8"),
        "xterm.css" => (XTERM_STYLE, "text/css; charset=utf-8"),
        _ => return ApiError::NotFound("No such asset.".into()).into_response(),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// `GET /`: the workspaces page.
pub async fn home(state: State<AppState>, user: Result<CurrentUser, ApiError>, uri: OriginalUri) -> Response {
    page(state, user, uri, Page::Workspaces).await
}

/// `GET /regions`.
pub async fn regions(state: State<AppState>, user: Result<CurrentUser, ApiError>, uri: OriginalUri) -> Response {
    page(state, user, uri, Page::Regions).await
}

/// `GET /admin`: admins only.
pub async fn admin(state: State<AppState>, user: Result<CurrentUser, ApiError>, uri: OriginalUri) -> Response {
    page(state, user, uri, Page::Admin).await
}

/// `GET /connections`: the connection log (a member's own sessions).
pub async fn connections(state: State<AppState>, user: Result<CurrentUser, ApiError>, uri: OriginalUri) -> Response {
    page(state, user, uri, Page::Connections).await
}

/// `GET /terminal?owner=&workspace=&agent=`: the web terminal (signed in).
/// Its policy differs from the other pages' in two ways: `connect-src` names
/// the regions' WebSocket origins too, and `style-src` allows inline styles,
/// which xterm.js's renderer writes (a `<style>` element it fills; style
/// cannot run script, and `script-src` stays `'self'`).
pub async fn terminal(
    State(state): State<AppState>,
    user: Result<CurrentUser, ApiError>,
    OriginalUri(uri): OriginalUri,
) -> Response {
    if let Err(e) = user {
        if let ApiError::Unauthorized(_) = e {
            let back = uri.path_and_query().map_or("/terminal", |p| p.as_str());
            let back: String = url::form_urlencoded::byte_serialize(back.as_bytes()).collect();
            return Redirect::to(&format!("/login?redirect={back}")).into_response();
        }
        return e.into_response();
    }
    let mut connect = String::from("'self'");
    if let Ok(regions) = crate::api::regions::region_list(&state).await {
        for o in regions.into_iter().filter_map(|r| r.access_url).filter_map(|u| origin(&u)) {
            let ws = o.replacen("http", "ws", 1);
            connect.push_str(&format!(" {o} {ws}"));
        }
    }
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self'; \
         connect-src {connect}; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    );
    let body = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
        <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
        <title>Terminal · Meridian</title><link rel=\"stylesheet\" href=\"/assets/dashboard.css\">\
        <link rel=\"stylesheet\" href=\"/assets/xterm.css\">\
        <script src=\"/assets/xterm.js\" defer></script><script src=\"/assets/terminal.js\" defer></script>\
        </head><body data-page=\"terminal\"><main><h1>Terminal: <span id=\"term-target\"></span></h1>\
        <p id=\"term-status\" role=\"status\">Connecting…</p><div id=\"terminal\" aria-label=\"Terminal\"></div>\
        <p><a href=\"/\">Back to your workspaces</a></p></main></body></html>";
    let mut resp = Html(body).into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&policy) {
        resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    resp
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Page {
    Workspaces,
    Regions,
    Connections,
    Admin,
}

impl Page {
    fn id(self) -> &'static str {
        match self {
            Page::Workspaces => "workspaces",
            Page::Regions => "regions",
            Page::Connections => "connections",
            Page::Admin => "admin",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Page::Workspaces => "Workspaces",
            Page::Regions => "Regions",
            Page::Connections => "Connections",
            Page::Admin => "Admin",
        }
    }
}

async fn page(
    State(state): State<AppState>,
    user: Result<CurrentUser, ApiError>,
    OriginalUri(uri): OriginalUri,
    page: Page,
) -> Response {
    let user = match user {
        Ok(CurrentUser(u)) => u,
        Err(ApiError::Unauthorized(_)) => {
            let back: String = url::form_urlencoded::byte_serialize(uri.path().as_bytes()).collect();
            return Redirect::to(&format!("/login?redirect={back}")).into_response();
        }
        Err(e) => return e.into_response(),
    };
    if page == Page::Admin && !user.admin {
        let body = shell(
            "Admins only",
            None,
            "<main><h1>Admins only</h1><p>This page is for administrators. \
            <a href=\"/\">Back to your workspaces</a>.</p></main>",
        );
        return with_policy((StatusCode::FORBIDDEN, Html(body)).into_response(), &[]);
    }
    let origins = match crate::api::regions::region_list(&state).await {
        Ok(regions) => regions.into_iter().filter_map(|r| r.access_url).filter_map(|u| origin(&u)).collect(),
        Err(_) => Vec::new(),
    };
    let nav = nav(page, &user.username, user.admin);
    let main = match page {
        Page::Workspaces => WORKSPACES,
        Page::Regions => REGIONS,
        Page::Connections => CONNECTIONS,
        Page::Admin => ADMIN,
    };
    with_policy(Html(shell(page.title(), Some((page.id(), &nav)), main)).into_response(), &origins)
}

fn nav(page: Page, username: &str, admin: bool) -> String {
    let link = |p: Page, href: &str| {
        let current = if p == page { " aria-current=\"page\"" } else { "" };
        format!("<a href=\"{href}\"{current}>{}</a>", p.title())
    };
    let admin_link = if admin { link(Page::Admin, "/admin") } else { String::new() };
    format!(
        "<header><nav aria-label=\"Main\"><strong class=\"brand\">Meridian</strong>{}{}{}{admin_link}</nav>\
         <div class=\"session\"><label for=\"region-picker\">Region</label> <select id=\"region-picker\"></select>\
         <span id=\"whoami\" data-admin=\"{admin}\">{}</span> <button type=\"button\" id=\"sign-out\">Sign out</button></div>\
         </header><p id=\"notice\" role=\"status\" hidden></p>",
        link(Page::Workspaces, "/"),
        link(Page::Regions, "/regions"),
        link(Page::Connections, "/connections"),
        escape(username)
    )
}

const WORKSPACES: &str = r#"<main>
<h1>Workspaces</h1>
<section aria-labelledby="ws-list-title"><h2 id="ws-list-title">Your workspaces</h2>
<div id="workspaces" aria-live="polite"><p>Loading…</p></div></section>
<section aria-labelledby="ws-new-title"><h2 id="ws-new-title">New workspace</h2>
<form id="create-workspace">
<label for="ws-name">Name</label><input id="ws-name" name="name" required pattern="[a-z0-9][a-z0-9-]*">
<label for="ws-agent">Agent (for apps that name none)</label><input id="ws-agent" name="agent" value="main" required>
<label for="ws-apps">Apps, one per line: <code>slug=port</code>, with a share (owner, authenticated, public) after it, and another agent before it: <code>db/adminer=8081 authenticated</code></label>
<textarea id="ws-apps" name="apps" rows="3">code=8080</textarea>
<button type="submit">Create workspace</button></form>
<div id="created" hidden><p>Agent tokens (shown once; each starts <code>meridian agent --agent-token</code>):</p><ul id="tokens"></ul></div>
<p id="ws-error" class="error" role="alert"></p></section>
</main>"#;

const REGIONS: &str = r#"<main>
<h1>Regions</h1>
<p>Latency is measured from this browser to each healthy region every 30 seconds; statuses refresh every 2 seconds.
The region picker (top right) chooses where your app links go.</p>
<table id="regions-table"><caption>Regions</caption><thead><tr><th scope="col">Region</th><th scope="col">Status</th><th scope="col">Healthy</th>
<th scope="col">Replicas</th><th scope="col">Version</th><th scope="col">Last heartbeat</th><th scope="col">Access URL</th><th scope="col">Latency</th></tr></thead>
<tbody id="regions"></tbody></table>
</main>"#;

const CONNECTIONS: &str = r#"<main>
<h1>Connections</h1>
<p>Sessions through the regions, newest first: each app visited (until a minute without a request), WebSocket,
forwarded TCP connection, SSH and terminal session, and each refusal. Members see their own.</p>
<form id="conn-filter"><span id="conn-user-field"><label for="conn-user">User</label><input id="conn-user" name="user"></span>
<label for="conn-workspace">Workspace (<code>owner/name</code>)</label><input id="conn-workspace" name="workspace">
<label for="conn-region">Region</label><input id="conn-region" name="region">
<label for="conn-kind">Kind</label><select id="conn-kind" name="kind"><option value="">Any</option>
<option>app</option><option>websocket</option><option>tcp</option><option>ssh</option><option>terminal</option><option>refused</option></select>
<label for="conn-since">Since</label><input id="conn-since" name="since" type="datetime-local">
<label for="conn-until">Until</label><input id="conn-until" name="until" type="datetime-local">
<button type="submit">Filter</button></form>
<p id="conn-error" class="error" role="alert"></p>
<table><caption>Connection records</caption><thead><tr><th scope="col">Started</th><th scope="col">Lasted</th><th scope="col">User</th>
<th scope="col">Region</th><th scope="col">Workspace</th><th scope="col">Target</th><th scope="col">From</th><th scope="col">Bytes up / down</th>
<th scope="col">Requests</th><th scope="col">Ended</th></tr></thead>
<tbody id="conn-rows"></tbody></table>
<button type="button" id="conn-older" hidden>Older records</button>
</main>"#;

const ADMIN: &str = r#"<main>
<h1>Admin</h1>
<section aria-labelledby="region-new-title"><h2 id="region-new-title">New region</h2>
<form id="create-region"><label for="region-name">Name</label><input id="region-name" name="name" required pattern="[a-z0-9][a-z0-9-]*">
<label for="region-display">Display name</label><input id="region-display" name="display_name">
<button type="submit">Create region</button></form>
<div id="region-token" hidden><p>Proxy token for <span id="region-token-name"></span> (shown once):</p>
<p><code id="region-token-value"></code> <button type="button" class="copy" data-copy="region-token-value">Copy</button></p></div>
<p id="region-error" class="error" role="alert"></p></section>
<section aria-labelledby="region-list-title"><h2 id="region-list-title">Regions and replicas</h2><div id="admin-regions"></div></section>
<section aria-labelledby="user-new-title"><h2 id="user-new-title">New user</h2>
<form id="create-user"><label for="user-name">Username</label><input id="user-name" name="username" required>
<label for="user-password">Password</label><input id="user-password" name="password" type="password" autocomplete="new-password" required minlength="8">
<label class="inline"><input type="checkbox" id="user-admin" name="admin"> Admin</label>
<button type="submit">Create user</button></form>
<p id="user-result" role="status"></p><p id="user-error" class="error" role="alert"></p></section>
<section aria-labelledby="users-title"><h2 id="users-title">Users</h2>
<p>Suspending a user ends their sessions, and every region cuts their open apps, WebSockets, shells and forwarded ports within seconds; signing them out everywhere does the same and lets them sign in again.</p>
<p id="users-error" class="error" role="alert"></p>
<table><caption>Users</caption><thead><tr><th scope="col">User</th><th scope="col">Role</th><th scope="col">Signs in with</th><th scope="col">Status</th><th scope="col">Last sign-in</th><th scope="col">Sessions</th><th scope="col">Actions</th></tr></thead>
<tbody id="user-rows"></tbody></table></section>
<section aria-labelledby="audit-title"><h2 id="audit-title">Audit log</h2>
<p>Every change made through the API: who, from where, and the fields that changed (newest first).</p>
<form id="audit-filter"><label for="audit-user">User</label><input id="audit-user" name="user">
<label for="audit-action">Action (or kind: <code>region</code>)</label><input id="audit-action" name="action">
<label for="audit-target">Target</label><input id="audit-target" name="target">
<label for="audit-since">Since</label><input id="audit-since" name="since" type="datetime-local">
<button type="submit">Filter</button></form>
<p id="audit-error" class="error" role="alert"></p>
<table><caption>Audit records</caption><thead><tr><th scope="col">When</th><th scope="col">Who</th><th scope="col">Action</th><th scope="col">Target</th><th scope="col">From</th><th scope="col">Changes</th></tr></thead>
<tbody id="audit-rows"></tbody></table>
<button type="button" id="audit-older" hidden>Older records</button></section>
</main>"#;
