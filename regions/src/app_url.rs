//! The app URL grammar: which app a request is for, from its host or path.
//!
//! - Subdomain apps: `{app}--{agent}--{workspace}--{user}.{wildcard base}`,
//!   and port URLs `{port}--…` (upstream http) and `{port}s--…` (upstream https).
//! - Path apps: `/@{user}/{workspace}.{agent}/apps/{app}/…`, or
//!   `/@{user}/{workspace}/apps/{app}/…` when the workspace has one agent.
//!
//! Every label is a [`Name`](crate::name::Name), so none holds `--` and the
//! split is unambiguous. Ports below 1024 are refused: they belong to the
//! workspace's system services, never to a user's app.

use crate::name::Name;

/// Lowest port a port URL may name.
pub const MIN_APP_PORT: u16 = 1024;

/// What a request asks the workspace for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppTarget {
    /// A declared app, by slug.
    Slug(String),
    /// A port on the workspace's loopback; `https` when the app itself speaks TLS.
    Port { port: u16, https: bool },
}

/// A parsed app request. `agent` is `None` for the one-agent path form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct AppRequest {
    pub user: String,
    pub workspace: String,
    pub agent: Option<String>,
    pub target: AppTarget,
}

/// Why an app host or path is refused; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppUrlError {
    /// 400: under the wildcard but not of the grammar.
    #[error("invalid app host: {0}")]
    BadHost(&'static str),
    /// 400: a port URL naming a port below 1024.
    #[error("port {0} is below {MIN_APP_PORT}; only ports from {MIN_APP_PORT} up can be opened")]
    LowPort(u16),
    /// 400: a path app of the wrong shape.
    #[error("invalid app path: {0}")]
    BadPath(&'static str),
    /// 404: `@me` is not resolved in app URLs (it would make one URL mean another app per user).
    #[error("`@me` cannot be used in app URLs; use the username")]
    AtMe,
}

impl AppUrlError {
    pub fn status(&self) -> u16 {
        match self {
            AppUrlError::AtMe => 404,
            _ => 400,
        }
    }
}

/// The result of matching a `Host` against the wildcard base.
#[derive(Debug, PartialEq, Eq)]
pub enum HostMatch {
    /// Not under the wildcard: the request is for the proxy itself (or a path app).
    NotAnApp,
    App(AppRequest),
    Invalid(AppUrlError),
}

/// Matches `host` (the `Host` header, any case, port allowed) against the
/// wildcard base host (`sydney.localhost` for `*.sydney.localhost:7081`).
pub fn parse_host(host: &str, base: &str) -> HostMatch {
    let host = strip_port(host).to_ascii_lowercase();
    let Some(label) = host.strip_suffix(base).and_then(|h| h.strip_suffix('.')) else {
        return HostMatch::NotAnApp;
    };
    match parse_label(label) {
        Ok(req) => HostMatch::App(req),
        Err(e) => HostMatch::Invalid(e),
    }
}

/// The wildcard base host of a pattern: `*.sydney.localhost:7081` →
/// `sydney.localhost` (lowercase, without a trailing dot: the same host to a
/// browser, so the same base when two regions' patterns are compared).
pub fn wildcard_base(pattern: &str) -> Option<String> {
    let rest = pattern.strip_prefix("*.")?;
    Some(strip_port(rest).trim_end_matches('.').to_ascii_lowercase())
}

/// `host` without a `:port` suffix (digits only).
pub fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn parse_label(label: &str) -> Result<AppRequest, AppUrlError> {
    if label.is_empty() || label.contains('.') {
        return Err(AppUrlError::BadHost("expected one label before the wildcard base"));
    }
    let parts: Vec<&str> = label.split("--").collect();
    let [app, agent, workspace, user] = parts[..] else {
        return Err(AppUrlError::BadHost("expected {app}--{agent}--{workspace}--{user}"));
    };
    for part in [agent, workspace, user] {
        Name::parse(part).map_err(|_| AppUrlError::BadHost("agent, workspace and user must be names"))?;
    }
    if user == "me" {
        return Err(AppUrlError::AtMe);
    }
    Ok(AppRequest {
        user: user.to_owned(),
        workspace: workspace.to_owned(),
        agent: Some(agent.to_owned()),
        target: parse_app(app)?,
    })
}

/// `8080` and `8443s` are ports; anything else must be an app slug.
fn parse_app(app: &str) -> Result<AppTarget, AppUrlError> {
    let (digits, https) = match app.strip_suffix('s') {
        Some(d) if !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) => (d, true),
        _ => (app, false),
    };
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = digits.parse().map_err(|_| AppUrlError::BadHost("port out of range"))?;
        if port < MIN_APP_PORT {
            return Err(AppUrlError::LowPort(port));
        }
        return Ok(AppTarget::Port { port, https });
    }
    Name::parse(app).map_err(|_| AppUrlError::BadHost("app slug must be a name"))?;
    Ok(AppTarget::Slug(app.to_owned()))
}

/// The result of matching a request path against the path-app grammar.
#[derive(Debug, PartialEq, Eq)]
pub enum PathMatch {
    NotAnApp,
    /// `prefix` is the app's base path (ends with `/`); `rest` is what the app sees (starts with `/`).
    App {
        req: AppRequest,
        prefix: String,
        rest: String,
    },
    /// 307 to this path: the app's base path without its trailing slash.
    AddSlash(String),
    Invalid(AppUrlError),
}

/// Matches a request path (no query) against `/@{user}/{workspace}[.{agent}]/apps/{app}/…`.
pub fn parse_path(path: &str) -> PathMatch {
    let Some(after_at) = path.strip_prefix("/@") else {
        return PathMatch::NotAnApp;
    };
    let mut segs = after_at.splitn(4, '/');
    let (user, ws_agent, apps, rest) = (segs.next(), segs.next(), segs.next(), segs.next());
    let (Some(user), Some(ws_agent), Some("apps"), Some(rest)) = (user, ws_agent, apps, rest) else {
        return PathMatch::Invalid(AppUrlError::BadPath("expected /@{user}/{workspace}[.{agent}]/apps/{app}/"));
    };
    if user == "me" {
        return PathMatch::Invalid(AppUrlError::AtMe);
    }
    let (app, tail) = match rest.split_once('/') {
        Some((app, tail)) => (app, Some(tail)),
        None => (rest, None),
    };
    let (workspace, agent) = match ws_agent.split_once('.') {
        Some((w, a)) => (w, Some(a)),
        None => (ws_agent, None),
    };
    let names_ok = [user, workspace, app].into_iter().chain(agent).all(|n| Name::parse(n).is_ok());
    if !names_ok {
        return PathMatch::Invalid(AppUrlError::BadPath("user, workspace, agent and app must be names"));
    }
    let prefix = format!("/@{user}/{ws_agent}/apps/{app}/");
    let Some(tail) = tail else {
        return PathMatch::AddSlash(prefix);
    };
    let req = AppRequest {
        user: user.to_owned(),
        workspace: workspace.to_owned(),
        agent: agent.map(str::to_owned),
        target: AppTarget::Slug(app.to_owned()),
    };
    PathMatch::App { req, rest: format!("/{tail}"), prefix }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(user: &str, ws: &str, agent: Option<&str>, target: AppTarget) -> AppRequest {
        AppRequest { user: user.into(), workspace: ws.into(), agent: agent.map(Into::into), target }
    }

    fn slug(s: &str) -> AppTarget {
        AppTarget::Slug(s.into())
    }

    #[test]
    fn hosts() {
        let base = "sydney.localhost";
        let cases: Vec<(&str, HostMatch)> = vec![
            (
                "code--main--dev--alice.sydney.localhost",
                HostMatch::App(app("alice", "dev", Some("main"), slug("code"))),
            ),
            (
                "code--main--dev--alice.sydney.localhost:7081",
                HostMatch::App(app("alice", "dev", Some("main"), slug("code"))),
            ),
            (
                "CODE--Main--DEV--alice.Sydney.LOCALHOST",
                HostMatch::App(app("alice", "dev", Some("main"), slug("code"))),
            ),
            (
                "8080--main--dev--alice.sydney.localhost",
                HostMatch::App(app("alice", "dev", Some("main"), AppTarget::Port { port: 8080, https: false })),
            ),
            (
                "8443s--main--dev--alice.sydney.localhost",
                HostMatch::App(app("alice", "dev", Some("main"), AppTarget::Port { port: 8443, https: true })),
            ),
            ("80--main--dev--alice.sydney.localhost", HostMatch::Invalid(AppUrlError::LowPort(80))),
            ("1023s--main--dev--alice.sydney.localhost", HostMatch::Invalid(AppUrlError::LowPort(1023))),
            ("99999--main--dev--alice.sydney.localhost", HostMatch::Invalid(AppUrlError::BadHost("port out of range"))),
            ("code--main--dev--me.sydney.localhost", HostMatch::Invalid(AppUrlError::AtMe)),
            ("sydney.localhost", HostMatch::NotAnApp),
            ("127.0.0.1:7081", HostMatch::NotAnApp),
            ("evilsydney.localhost", HostMatch::NotAnApp),
            (
                "code--dev--alice.sydney.localhost",
                HostMatch::Invalid(AppUrlError::BadHost("expected {app}--{agent}--{workspace}--{user}")),
            ),
            (
                "x--code--main--dev--alice.sydney.localhost",
                HostMatch::Invalid(AppUrlError::BadHost("expected {app}--{agent}--{workspace}--{user}")),
            ),
            (
                "a.code--main--dev--alice.sydney.localhost",
                HostMatch::Invalid(AppUrlError::BadHost("expected one label before the wildcard base")),
            ),
            (
                ".sydney.localhost",
                HostMatch::Invalid(AppUrlError::BadHost("expected one label before the wildcard base")),
            ),
            (
                "code--main--d_v--alice.sydney.localhost",
                HostMatch::Invalid(AppUrlError::BadHost("agent, workspace and user must be names")),
            ),
            (
                "c_de--main--dev--alice.sydney.localhost",
                HostMatch::Invalid(AppUrlError::BadHost("app slug must be a name")),
            ),
        ];
        for (host, want) in cases {
            assert_eq!(parse_host(host, base), want, "host {host:?}");
        }
    }

    #[test]
    fn paths() {
        let cases: Vec<(&str, PathMatch)> = vec![
            (
                "/@alice/dev.main/apps/code/",
                PathMatch::App {
                    req: app("alice", "dev", Some("main"), slug("code")),
                    prefix: "/@alice/dev.main/apps/code/".into(),
                    rest: "/".into(),
                },
            ),
            (
                "/@alice/dev/apps/code/x/y?z",
                PathMatch::App {
                    req: app("alice", "dev", None, slug("code")),
                    prefix: "/@alice/dev/apps/code/".into(),
                    rest: "/x/y?z".into(),
                },
            ),
            ("/@alice/dev/apps/code", PathMatch::AddSlash("/@alice/dev/apps/code/".into())),
            ("/@me/dev/apps/code/", PathMatch::Invalid(AppUrlError::AtMe)),
            (
                "/@alice/dev/files/code/",
                PathMatch::Invalid(AppUrlError::BadPath("expected /@{user}/{workspace}[.{agent}]/apps/{app}/")),
            ),
            (
                "/@alice/dev",
                PathMatch::Invalid(AppUrlError::BadPath("expected /@{user}/{workspace}[.{agent}]/apps/{app}/")),
            ),
            (
                "/@alice/d..ev/apps/code/",
                PathMatch::Invalid(AppUrlError::BadPath("user, workspace, agent and app must be names")),
            ),
            (
                "/@alice/dev/apps/../",
                PathMatch::Invalid(AppUrlError::BadPath("user, workspace, agent and app must be names")),
            ),
            ("/healthz", PathMatch::NotAnApp),
            ("/api/v2/regions", PathMatch::NotAnApp),
        ];
        for (path, want) in cases {
            assert_eq!(parse_path(path), want, "path {path:?}");
        }
    }

    #[test]
    fn wildcard_bases() {
        assert_eq!(wildcard_base("*.sydney.localhost:7081").as_deref(), Some("sydney.localhost"));
        assert_eq!(wildcard_base("*.Apps.Example.com").as_deref(), Some("apps.example.com"));
        assert_eq!(wildcard_base("*.FRANKFURT.localhost.:7902").as_deref(), Some("frankfurt.localhost"));
        assert_eq!(wildcard_base("apps.example.com"), None);
    }

    #[test]
    fn statuses() {
        assert_eq!(AppUrlError::AtMe.status(), 404);
        assert_eq!(AppUrlError::LowPort(80).status(), 400);
        assert_eq!(AppUrlError::BadHost("x").status(), 400);
    }
}
