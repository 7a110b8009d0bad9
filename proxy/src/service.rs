//! The pingora `ProxyHttp` implementation: a dispatcher over the modules that
//! do the work (`routing`, `auth`, `upstream`, `hygiene`, `pages`).
//! Per-request state lives in [`Ctx`].

use crate::auth::{Auth, Decision};
use crate::connection_log::{OpenStream, Seen};
use crate::pages::Reply;
use crate::relay::Relay;
use crate::routing::{self, AppRoute, Route};
use crate::state::{InFlight, ProxyState};
use crate::{gate, hygiene, upstream};
use async_trait::async_trait;
use meridian_regions::app_token::AppClaims;
use meridian_regions::connection_log::Ending;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use std::sync::Arc;

/// How long a pooled connection to the coordinator's API may idle.
const API_POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

pub struct MeridianProxy {
    pub state: Arc<ProxyState>,
    pub auth: Arc<Auth>,
    pub relay: Arc<Relay>,
    /// The wildcard base host, e.g. `sydney.localhost`, if subdomain apps are served.
    pub wildcard_base: Option<String>,
    /// On the primary: the coordinator API, for everything that is not an app.
    pub api_upstream: Option<ApiUpstream>,
    /// Longest wait for each read of an app's answer (→ 504).
    pub app_timeout: std::time::Duration,
    /// Longest wait for a request head, and for the first piece of a chunked body.
    pub header_timeout: std::time::Duration,
    /// How long a keep-alive connection may idle between requests, in seconds.
    pub idle_timeout_secs: u64,
    /// Connection accounting for proxies and agents calling the API.
    pub control_plane: gate::ControlPlane,
}

/// The coordinator API behind the primary's proxy.
pub struct ApiUpstream {
    /// Its internal (loopback) address.
    pub addr: std::net::SocketAddr,
    /// Proves to the API that this proxy set `X-Forwarded-For`.
    pub forwarded_by: meridian_regions::token::Secret,
}

/// Per-request state.
pub struct Ctx {
    /// Keeps the request counted for the shutdown drain.
    _in_flight: InFlight,
    app: Option<Served>,
    /// The normalized origin-form target, when it differs from what the client sent.
    forward_path: Option<String>,
    /// An API call carrying a proxy or agent token: the connection counts as
    /// a control-plane client's unless the API refuses the token.
    control: bool,
    /// Whether the request was already sent again after its path died.
    retried: bool,
    /// A stream or WebSocket being relayed: its connection-log record, written at its end.
    open: Option<OpenStream>,
    /// An upgraded connection registered with its user while it lasts (cut
    /// if their tokens are revoked).
    access: Option<crate::access::Registration>,
}

/// An authorized app request on its way to the app.
struct Served {
    claims: Arc<AppClaims>,
    /// The verified app token: it authorizes the stream at the relay holding the tunnel.
    token: Arc<str>,
    route: Arc<AppRoute>,
    host: Arc<str>,
    set_cookie: Option<String>,
    /// A shell or TCP stream, or the web terminal, not an app.
    stream: Option<StreamUpgrade>,
}

/// How a stream was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamUpgrade {
    /// `Upgrade: meridian-stream`, the token in `Meridian-Stream-Token` (the CLI).
    Stream,
    /// A WebSocket (the web terminal in a browser, which cannot set headers):
    /// the token is offered as the subprotocol `meridian.token.<token>`.
    WebSocket,
}

/// The subprotocol prefix that carries a terminal's stream token.
const TOKEN_SUBPROTOCOL: &str = "meridian.token.";
/// The subprotocol the terminal's page asks for and the agent answers.
const TERMINAL_SUBPROTOCOL: &str = "meridian.terminal";

impl StreamUpgrade {
    fn token(self, req: &RequestHeader) -> Option<&str> {
        match self {
            Self::Stream => req.headers.get(meridian_regions::stream::TOKEN_HEADER).and_then(|v| v.to_str().ok()),
            Self::WebSocket => req
                .headers
                .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .find_map(|p| p.trim().strip_prefix(TOKEN_SUBPROTOCOL)),
        }
    }
}

/// A stream is opened by an HTTP/1.1 upgrade to `meridian-stream`; the web
/// terminal by a WebSocket.
fn stream_upgrade(req: &RequestHeader, route: &AppRoute) -> std::result::Result<StreamUpgrade, &'static str> {
    let terminal = route.req.target == meridian_regions::app_url::AppTarget::Slug("terminal".into());
    let upgrade = req.headers.get(http::header::UPGRADE).map(|u| u.as_bytes());
    match upgrade {
        Some(u) if terminal && u.eq_ignore_ascii_case(b"websocket") => Ok(StreamUpgrade::WebSocket),
        Some(u) if !terminal && u.eq_ignore_ascii_case(meridian_regions::stream::UPGRADE_PROTOCOL.as_bytes()) => {
            Ok(StreamUpgrade::Stream)
        }
        _ if terminal => Err("The web terminal is opened with a WebSocket (the dashboard's Terminal page)."),
        _ => Err("A shell or TCP stream is opened with an HTTP/1.1 upgrade (`Upgrade: meridian-stream`): \
             use `meridian ssh` or `meridian port-forward`."),
    }
}

impl MeridianProxy {
    fn count(&self, outcome: &str) {
        self.state.metrics.requests.inc(outcome);
    }

    /// A stream or WebSocket authorized: its record opens.
    fn opened(&self, session: &Session, route: &AppRoute, stream: bool, claims: &AppClaims) -> Option<OpenStream> {
        let log = self.state.connection_log()?;
        Some(log.stream_opened(&seen(session, route, stream, Some(claims))))
    }

    /// A request refused before the app: recorded (within the refusal rate).
    fn refused(&self, session: &Session, route: &AppRoute, stream: bool, reason: &str) {
        if let Some(log) = self.state.connection_log() {
            log.refused(&seen(session, route, stream, None), session.is_upgrade_req(), reason);
        }
    }
}

/// What the connection log sees of a request.
fn seen<'a>(session: &'a Session, route: &'a AppRoute, stream: bool, claims: Option<&'a AppClaims>) -> Seen<'a> {
    Seen {
        req: &route.req,
        stream,
        claims,
        client: session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
        user_agent: session.req_header().headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()),
    }
}

/// Why a stream was refused, for the connection log.
fn stream_refusal(status: u16, had_token: bool) -> &'static str {
    match (status, had_token) {
        (401, false) => "no stream token",
        (401, true) => "an expired stream token",
        (503, _) => "the coordinator could not be asked",
        _ => "a stream token that does not open this stream (forged, or for another one)",
    }
}

/// How a relayed stream or WebSocket ended, from the error it ended with.
fn ending(e: Option<&Error>) -> Ending {
    let Some(e) = e else { return Ending::Closed };
    match (e.esource(), e.etype()) {
        (_, ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::ConnectTimedout) => Ending::Timeout,
        (pingora::ErrorSource::Downstream, _) => Ending::ClientGone,
        _ => Ending::AgentGone,
    }
}

#[async_trait]
impl ProxyHttp for MeridianProxy {
    type CTX = Ctx;

    /// No downstream modules. pingora's default adds its response
    /// compression module switched off, which still costs a context per
    /// request and a call in every header and body phase; Meridian never
    /// compresses (an app's own `Content-Encoding` passes through as it is).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx {
            _in_flight: self.state.enter(),
            app: None,
            forward_path: None,
            control: false,
            retried: false,
            open: None,
            access: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let checked = match gate::check(session) {
            Ok(c) => c,
            Err(refused) => {
                self.count("rejected");
                // Nothing behind a refused request is read: the connection closes.
                session.set_keepalive(None);
                Reply::page(refused.status, &refused.message).write(session).await?;
                return Ok(true);
            }
        };
        // Keep-alive (when the client wants it) until idle this long, never forever.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.idle_timeout_secs));
        }
        // HTTP/1.1 pipelining (RFC 9112 §9.3.2): a request sent behind this
        // one before its answer is answered next, in order. Never behind an
        // upgrade request: whether what follows it is a request or the
        // upgraded protocol's bytes depends on the app's answer, so the
        // connection closes after it (nothing behind it is read).
        let pipelining = !session.is_upgrade_req();
        session.set_pipelining_enabled(pipelining);
        let req = session.req_header();
        let (host, query) = (checked.host, req.uri.query());
        let passthrough = self.api_upstream.is_some();
        let route =
            routing::route(&host, &checked.path, query, self.wildcard_base.as_deref(), passthrough, &self.state);
        // Forward in origin form (never absolute-form) with the normalized path.
        // Only a target that changes is built (no allocation for the common case).
        if !gate::is_target(req.raw_path(), &checked.path, query) {
            ctx.forward_path = Some(match query {
                Some(q) => format!("{}?{q}", checked.path),
                None => checked.path.clone(),
            });
        }
        let (outcome, reply) = match route {
            Route::Api => {
                ctx.control = self.control_plane.on_request(session);
                ("api", None)
            }
            Route::Own(local) => {
                self.count("own");
                local.write(session).await?;
                return Ok(true);
            }
            Route::Reject { status, message } => ("rejected", Some(Reply::page(status, &message))),
            Route::Redirect { status, location } => ("rejected", Some(Reply::redirect(status, &location))),
            Route::App(route) if !hygiene::same_origin_upgrade(session.req_header(), self.auth.scheme(), &host) => {
                self.refused(session, &route, false, "a WebSocket from another origin");
                (
                    "rejected",
                    Some(Reply::page(403, "A WebSocket to an app must come from a page of that app (Origin differs).")),
                )
            }
            Route::Stream(route) => match stream_upgrade(session.req_header(), &route) {
                Err(message) => ("rejected", Some(Reply::page(400, message))),
                Ok(upgrade) => {
                    let token = upgrade.token(session.req_header());
                    match self.auth.authorize_stream(token, &route.binding).await {
                        Decision::Serve { claims, token, set_cookie } => {
                            ctx.open = self.opened(session, &route, true, &claims);
                            let stream = Some(upgrade);
                            ctx.app = Some(Served { claims, token, route, host, set_cookie, stream });
                            ("stream", None)
                        }
                        Decision::Respond(reply) => {
                            self.refused(session, &route, true, stream_refusal(reply.status, token.is_some()));
                            ("denied", Some(reply))
                        }
                    }
                }
            },
            Route::App(route) => match self.auth.authorize(session.req_header(), &host, &route).await {
                Decision::Serve { claims, token, set_cookie } => {
                    if session.is_upgrade_req() {
                        ctx.open = self.opened(session, &route, false, &claims);
                    }
                    ctx.app = Some(Served { claims, token, route, host, set_cookie, stream: None });
                    ("app", None)
                }
                Decision::Respond(reply) if reply.status == 404 => {
                    self.refused(session, &route, false, "not shared with this user (404)");
                    ("denied", Some(reply))
                }
                Decision::Respond(reply) => ("login", Some(reply)),
            },
        };
        self.count(outcome);
        let reply = match reply {
            Some(reply) => reply,
            None => match gate::first_chunk(session, self.header_timeout).await {
                Ok(()) => return Ok(false),
                Err(refused) => {
                    session.set_keepalive(None);
                    Reply::page(refused.status, &refused.message)
                }
            },
        };
        reply.write(session).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        match (&ctx.app, &self.api_upstream) {
            (Some(served), _) => {
                let upgrade = session.is_upgrade_req();
                let timeout = (!upgrade).then_some(self.app_timeout);
                // An upgraded connection is cut if its user's tokens are revoked while it lasts.
                if upgrade && ctx.access.is_none() {
                    ctx.access = self.state.access.register(&served.claims);
                }
                let cut = ctx.access.as_ref().map(|r| r.cut.clone());
                upstream::peer(&self.relay, &served.claims, &served.token, timeout, cut)
            }
            (None, Some(api)) => {
                let mut peer = HttpPeer::new(api.addr, false, String::new());
                // Under the API server's own idle limit (hyper closes a keep-alive
                // connection after 30 s without a request): a pooled connection is
                // dropped here first, never reused as the server closes it (a 502).
                peer.options.idle_timeout = Some(API_POOL_IDLE);
                Ok(Box::new(peer))
            }
            (None, None) => Error::e_explain(ErrorType::InternalError, "no app routed"),
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let bad_path = || Error::explain(ErrorType::InvalidHTTPHeader, "bad app path");
        if let Some(path) = &ctx.forward_path {
            up.set_uri(path.parse().map_err(|_| bad_path())?);
        }
        let client_ip = session.client_addr().and_then(|a| a.as_inet()).and_then(|a| crate::memo::client_ip(a.ip()));
        let Some(served) = &ctx.app else {
            // The coordinator's API (on the primary) learns the client's
            // address from this proxy alone: it limits sign-ins by it.
            let host = session.req_header().headers.get(http::header::HOST).and_then(|h| h.to_str().ok());
            let host = host.unwrap_or_default().to_owned();
            hygiene::forwarding(up, client_ip, self.auth.scheme(), &host)?;
            if let Some(api) = &self.api_upstream {
                up.insert_header(meridian_regions::headers::FORWARDED_BY, api.forwarded_by.expose())?;
            }
            return Ok(());
        };
        hygiene::request(up, client_ip, self.auth.scheme(), &served.host)?;
        if let Some((_, rest)) = &served.route.path {
            up.set_uri(rest.parse().map_err(|_| bad_path())?);
        }
        match served.stream {
            // Pingora forwards only WebSocket upgrades by itself (it drops
            // other `Upgrade`s as hop-by-hop); a stream's is put back here,
            // exactly as checked in `request_filter`.
            Some(StreamUpgrade::Stream) => {
                up.insert_header(http::header::CONNECTION, "upgrade")?;
                up.insert_header(http::header::UPGRADE, meridian_regions::stream::UPGRADE_PROTOCOL)?;
            }
            // The token offered as a subprotocol stays here; the agent gets the terminal's.
            Some(StreamUpgrade::WebSocket) => {
                up.insert_header(http::header::SEC_WEBSOCKET_PROTOCOL, TERMINAL_SUBPROTOCOL)?;
            }
            None => {}
        }
        Ok(())
    }

    async fn response_filter(&self, session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        if ctx.control {
            self.control_plane.on_response(session, resp.status.as_u16());
        }
        // The API's responses (e.g. the login cookie) pass as they are.
        let Some(served) = ctx.app.as_mut() else { return Ok(()) };
        hygiene::response(resp, served.claims.sandbox)?;
        let scope = hygiene::CorsScope {
            origin: session.req_header().headers.get(http::header::ORIGIN).map(|o| o.as_bytes()),
            scheme: self.auth.scheme(),
            host: &served.host,
            owner: &served.route.req.user,
            passthru: served.claims.cors_passthru,
        };
        hygiene::cors(resp, &scope);
        if let Some(cookie) = served.set_cookie.take() {
            resp.append_header("set-cookie", cookie)?;
        }
        Ok(())
    }

    /// The connection log: an app request counts into its session; a stream
    /// or WebSocket's record is written as it ends.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let (Some(log), Some(served)) = (self.state.connection_log(), &ctx.app) else { return };
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let counts = (session.body_bytes_read() as u64, session.body_bytes_sent() as u64);
        match ctx.open.take() {
            Some(open) => log.stream_ended(open, (status, counts.0, counts.1), ending(e)),
            None => {
                let seen = seen(session, &served.route, served.stream.is_some(), Some(&served.claims));
                log.app_request(&seen, status, counts.0, counts.1);
            }
        }
    }

    /// Pingora's rule (idempotent requests whose body is still buffered may
    /// go again on a reused connection), plus one of Meridian's: an
    /// idempotent app request whose stream died before any answer came back
    /// (the relay or tunnel it went through was killed, the agent moved) is
    /// sent once more, on the path the agent has now. A slow app (a timeout)
    /// is never asked twice, and nothing the client already saw is repeated.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
            return e;
        }
        e.retry.decide_reuse(client_reused);
        let path_died = matches!(e.etype(), ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed);
        if path_died && ctx.app.is_some() && !ctx.retried && session.response_written().is_none() {
            ctx.retried = true;
            e.set_retry(true);
        }
        e
    }

    /// A clear page for each way the app can be out of reach.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        let (status, message) = match e.etype() {
            ErrorType::ConnectRefused => (502, "The workspace agent is not connected to this region."),
            ErrorType::ConnectError | ErrorType::ConnectTimedout => {
                (502, "The app is not reachable: is it running in the workspace?")
            }
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => (504, "The app did not answer in time."),
            ErrorType::HTTPStatus(code) => (*code, "The request could not be proxied."),
            _ if matches!(e.esource(), pingora::ErrorSource::Downstream) => (400, "The request was malformed."),
            _ => (502, "The app closed the connection before answering."),
        };
        let code = if session.response_written().is_some() {
            0 // headers already went out: the client sees an aborted response
        } else {
            // This connection is not reused: say so, so clients do not reuse it either.
            session.set_keepalive(None);
            let _ = Reply::page(status, message).write(session).await;
            status
        };
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }
}
