//! Which handler a request goes to, from its host and path: an app (by
//! subdomain or path), the proxy's own endpoints, or a refusal with the
//! documented status.

use crate::endpoints;
use crate::state::ProxyState;
use meridian_regions::app_token::{path_binding, subdomain_binding};
use meridian_regions::app_url::{parse_host, parse_path, AppRequest, HostMatch, PathMatch};
use std::sync::Arc;

/// A request for an app.
#[derive(Debug, Clone)]
pub struct AppRoute {
    pub req: AppRequest,
    pub subdomain: bool,
    /// What the app token must be bound to.
    pub binding: String,
    /// For path apps: the base path (cookie path) and the path the app sees.
    pub path: Option<(String, String)>,
}

impl AppRoute {
    /// The path Meridian's cookies for this app are set on: a path app's
    /// base path, a subdomain app's whole host.
    pub fn cookie_path(&self) -> &str {
        self.path.as_ref().map_or("/", |(prefix, _)| prefix.as_str())
    }
}

pub enum Route {
    /// Shared: a subdomain app's route is remembered for the connection's
    /// next request (see [`crate::memo`]).
    App(Arc<AppRoute>),
    /// A shell or TCP stream (see `meridian_regions::stream`), authorized by a
    /// stream token, carried to the agent like an app's upgraded connection.
    Stream(Arc<AppRoute>),
    /// Not an app, on the primary: the coordinator's API and pages.
    Api,
    Own(endpoints::Local),
    Reject {
        status: u16,
        message: String,
    },
    Redirect {
        status: u16,
        location: String,
    },
}

/// Routes a checked request (see [`crate::gate::check`]: `host` and the
/// normalized `path`) against the wildcard base, then by path. With
/// `api_passthrough` (the primary), whatever is not an app goes to the API.
pub fn route(
    host: &Arc<str>,
    path: &str,
    query: Option<&str>,
    wildcard_base: Option<&str>,
    api_passthrough: bool,
    state: &ProxyState,
) -> Route {
    if let Some(base) = wildcard_base {
        if let Some(app) = crate::memo::route(host) {
            return Route::App(app);
        }
        match parse_host(host, base) {
            HostMatch::App(app) => {
                let app = Arc::new(AppRoute {
                    binding: subdomain_binding(strip_port(host)),
                    req: app,
                    subdomain: true,
                    path: None,
                });
                crate::memo::remember_route(host.clone(), app.clone());
                return Route::App(app);
            }
            HostMatch::Invalid(e) => return Route::Reject { status: e.status(), message: e.to_string() },
            HostMatch::NotAnApp => {}
        }
    }
    match meridian_regions::stream::parse_path(path) {
        Some(Ok(stream)) => return Route::Stream(Arc::new(stream_route(stream, query))),
        Some(Err(e)) => return Route::Reject { status: e.status(), message: e.to_string() },
        None => {}
    }
    match parse_path(path) {
        PathMatch::App { req: app, prefix, rest } => {
            let rest = match query {
                Some(q) => format!("{rest}?{q}"),
                None => rest,
            };
            Route::App(Arc::new(AppRoute {
                binding: path_binding(strip_port(host), &prefix),
                req: app,
                subdomain: false,
                path: Some((prefix, rest)),
            }))
        }
        PathMatch::AddSlash(prefix) => {
            let location = match query {
                Some(q) => format!("{prefix}?{q}"),
                None => prefix,
            };
            Route::Redirect { status: 307, location }
        }
        PathMatch::Invalid(e) => Route::Reject { status: e.status(), message: e.to_string() },
        // Readiness is the data plane's (draining), also in front of the API.
        PathMatch::NotAnApp if api_passthrough && path != "/readyz" => Route::Api,
        PathMatch::NotAnApp => match endpoints::answer(path, state) {
            Some(local) => Route::Own(local),
            None => Route::Own(endpoints::Local::error(404, "Nothing is served at this address.")),
        },
    }
}

/// A stream as the app machinery carries it: its path is the base, and the
/// agent sees `/` with the query (the target it reaches is in the token; a
/// terminal's session and size are in the query).
fn stream_route(stream: meridian_regions::stream::StreamRequest, query: Option<&str>) -> AppRoute {
    let binding = stream.binding();
    let path = stream.path();
    let rest = query.map_or_else(|| "/".to_owned(), |q| format!("/?{q}"));
    AppRoute {
        req: AppRequest {
            target: meridian_regions::app_url::AppTarget::Slug(stream.kind.to_string()),
            user: stream.user,
            workspace: stream.workspace,
            agent: Some(stream.agent),
        },
        subdomain: false,
        binding,
        path: Some((path, rest)),
    }
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}
