//! App authorization on the proxy.
//!
//! In order: a `meridian_app_ticket` in the query is redeemed for an app
//! session (cookie) and the browser sent back to the clean URL; a valid
//! `meridian_app_token` cookie for exactly this app is served from a moka
//! cache without any coordinator call; otherwise the proxy asks the
//! coordinator for a token (with the app session, or anonymously for public
//! apps), and a refusal becomes a login redirect (anonymous) or 404 (signed in).
//!
//! Degraded mode: while the coordinator cannot be reached, a token that
//! expired at most `--offline-grace` ago (its signature still valid) is served
//! rather than renewed, so users already signed in keep working through an outage.

use crate::pages::Reply;
use crate::routing::AppRoute;
use arc_swap::ArcSwap;
use meridian_regions::api::{IssueAppToken, RedeemTicket};
use meridian_regions::app_token::{stream_target, AppClaims, TokenError, Verifier};
use meridian_regions::client::{Client, ClientError};
#[cfg(doc)]
use meridian_regions::headers::MAX_COOKIE_COPIES;
use meridian_regions::headers::{cookie_copies, cookie_name, APP_SESSION_COOKIE, APP_TICKET_PARAM, APP_TOKEN_COOKIE};
use pingora::http::RequestHeader;
use std::sync::Arc;
use std::time::Duration;

/// Verified tokens kept, and for how long at most (each hit still checks expiry).
const CACHE_CAPACITY: u64 = 100_000;
const CACHE_TTL: Duration = Duration::from_secs(60);
/// At most one key refetch per this interval, however many tokens name
/// unknown key ids (a forged `kid` must not make the proxy hammer the coordinator).
const KEY_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

pub enum Decision {
    /// Serve the app: `token` is the verified app token (it authorizes the
    /// relay stream), and `set_cookie` carries it when freshly issued.
    Serve { claims: Arc<AppClaims>, token: Arc<str>, set_cookie: Option<String> },
    /// Answer without reaching the app.
    Respond(Reply),
}

pub struct Auth {
    coordinator: Client,
    verifier: ArcSwap<Verifier>,
    /// Verified tokens: their claims, and the token shared (it goes with the
    /// request as the grant for a relay stream, copied once, not per request).
    /// Keyed by the whole token; hashed with foldhash, not SipHash: a token is
    /// ~400 bytes, hashed on every request, and only verified tokens are stored.
    cache: moka::sync::Cache<String, (Arc<AppClaims>, Arc<str>), foldhash::fast::RandomState>,
    /// Where browsers log in: the primary's access URL.
    login_url: String,
    /// This proxy's scheme as browsers see it.
    scheme: &'static str,
    /// How long past expiry a token stays good while the coordinator is unreachable.
    offline_grace: Duration,
    /// Whether the registration loop reaches the coordinator.
    state: Arc<crate::state::ProxyState>,
    /// When keys were last refetched for an unknown key id.
    /// Held while keys are refetched (requests that met the same unknown key
    /// wait for that one fetch instead of failing), with when it last ran.
    last_refetch: tokio::sync::Mutex<Option<std::time::Instant>>,
}

impl Auth {
    pub fn new(
        coordinator: Client,
        login_url: &str,
        tls: bool,
        offline_grace: Duration,
        state: Arc<crate::state::ProxyState>,
    ) -> Self {
        Self {
            offline_grace,
            state,
            coordinator,
            verifier: ArcSwap::from_pointee(Verifier::default()),
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(CACHE_TTL)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            login_url: login_url.trim_end_matches('/').to_owned(),
            scheme: if tls { "https" } else { "http" },
            last_refetch: tokio::sync::Mutex::new(None),
        }
    }

    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// The name of Meridian cookie `name` for `route`: `__Host-` prefixed
    /// over HTTPS for a subdomain app (its cookies are for the whole host,
    /// so no sibling app can plant one); a path app's are for its base path.
    fn cookie(&self, name: &'static str, route: &AppRoute) -> &'static str {
        cookie_name(name, self.scheme == "https" && route.subdomain)
    }

    /// Installs the verification keys received at registration.
    pub fn set_keys(&self, keys: &[meridian_regions::app_token::PublicKey]) {
        self.verifier.store(Arc::new(Verifier::new(keys)));
    }

    /// Serves, redirects to sign in, or refuses a request for `route`. Every
    /// copy of a cookie is tried (at most [`MAX_COOKIE_COPIES`]): a sibling
    /// app can plant one on a parent domain, and the copy that verifies for
    /// this app is the user's; a planted one never locks anyone out.
    pub async fn authorize(&self, req: &RequestHeader, host: &str, route: &AppRoute) -> Decision {
        if let Some(ticket) = query_param(req, APP_TICKET_PARAM) {
            return Decision::Respond(self.redeem(req, host, route, &ticket).await);
        }
        let tokens = || cookie_copies(&req.headers, self.cookie(APP_TOKEN_COOKIE, route));
        for token in tokens() {
            if let Some((claims, token)) = self.verify(token, &route.binding).await {
                return Decision::Serve { claims, token, set_cookie: None };
            }
        }
        // Known to be down: do not wait for it before falling back to the grace.
        let down = || !self.state.registration().coordinator_reachable;
        if tokens().next().is_some() && down() {
            if let Some(decision) = self.offline(tokens(), &route.binding) {
                return decision;
            }
        }
        match self.issue(req, host, route).await {
            Err(e) => self.offline(tokens(), &route.binding).unwrap_or_else(|| Decision::Respond(coordinator_down(&e))),
            Ok(decision) => decision,
        }
    }

    /// Serves or refuses a shell or TCP stream: its token (from the
    /// coordinator, for the workspace's owner; see `service::StreamUpgrade`) must be bound to exactly this stream. Past its expiry it is
    /// taken only within the offline grace while the coordinator cannot
    /// renew it (a session resuming through this region during an outage).
    /// An expired token is a 401 (the client gets a new one); any other
    /// refusal the 404 an app gives.
    pub async fn authorize_stream(&self, token: Option<&str>, binding: &str) -> Decision {
        let Some(token) = token else {
            return Decision::Respond(Reply::page(
                401,
                "A stream needs a stream token (a Meridian-Stream-Token header; `meridian ssh` and \
                 `meridian port-forward` get one, the dashboard's Terminal page too).",
            ));
        };
        if let Some((claims, token)) = self.verify(token, binding).await {
            return Decision::Serve { claims, token, set_cookie: None };
        }
        if !self.state.coordinator_renews() {
            if let Some(decision) = self.offline(std::iter::once(token), binding) {
                return decision;
            }
        }
        if self.verifier.load().verify(token, binding) == Err(TokenError::Expired) {
            return Decision::Respond(Reply::page(
                401,
                "The stream token has expired: get a new one from the coordinator.",
            ));
        }
        Decision::Respond(Reply::page(404, "No such workspace or agent, or this token does not open this stream."))
    }

    /// Whether a peer relay may open a stream to `target` in agent `agent`'s
    /// workspace: `grant` must be an app token for exactly that app, signed
    /// by the coordinator and current. Past its expiry it counts only while
    /// the coordinator cannot renew tokens for this relay either (unreachable,
    /// or its database down: an outage, so the asking proxy cannot renew it
    /// and serves the user within the grace), and then for at most the offline grace; with
    /// the coordinator up, an expired grant (a user who signed out, a token
    /// replayed) opens nothing.
    pub fn admits_stream(&self, grant: &str, agent: uuid::Uuid, target: &str) -> bool {
        let grace = self.grace_now();
        if let Some((c, _)) = self.cache.get(grant) {
            let now = chrono::Utc::now().timestamp();
            let fresh = c.exp.saturating_add(grace as i64) > now;
            return fresh
                && c.agent_id == agent
                && stream_target(&c.upstream).as_deref() == Some(target)
                && !self.state.access.refuses(&c);
        }
        let verified = self.verifier.load().verify_stream(grant, agent, target, grace);
        verified.is_ok_and(|c| !self.state.access.refuses(&c))
    }

    /// The grace past expiry that holds now, in seconds: the offline grace
    /// while the coordinator cannot renew tokens (unreachable, or answering
    /// that it cannot serve, as with its database down: the last call to it
    /// failed), else none. The proxy serving the user falls back to the
    /// grace on the same failure, so a mesh hop does not refuse what the
    /// user's region serves.
    fn grace_now(&self) -> u64 {
        if self.state.coordinator_renews() {
            0
        } else {
            self.offline_grace.as_secs()
        }
    }

    /// The agent an attach token admits, checked with the cached keys.
    pub fn verify_attach_for(&self, token: &str, region: &str) -> Option<uuid::Uuid> {
        self.verifier.load().verify_attach_for(token, region).ok()
    }

    /// Serves the first of `tokens` that is valid but for having expired
    /// within the offline grace, for use only while the coordinator cannot
    /// renew it.
    fn offline<'t>(&self, mut tokens: impl Iterator<Item = &'t str>, binding: &str) -> Option<Decision> {
        let verifier = self.verifier.load();
        let grace = self.offline_grace.as_secs();
        let (claims, token) = tokens.find_map(|t| {
            let claims = verifier.verify_with_grace(t, binding, grace).ok()?;
            (!self.state.access.refuses(&claims)).then_some((claims, t))
        })?;
        self.state.metrics.tokens.inc("grace");
        Some(Decision::Serve { claims: Arc::new(claims), token: token.into(), set_cookie: None })
    }

    /// The hot path: a cache hit costs a hash lookup and two comparisons.
    async fn verify(&self, token: &str, binding: &str) -> Option<(Arc<AppClaims>, Arc<str>)> {
        let verified = self.verify_uncounted(token, binding).await;
        let result = match &verified {
            Some((_, true)) => "cached",
            Some((_, false)) => "verified",
            None => "refused",
        };
        self.state.metrics.tokens.inc(result);
        verified.map(|(verified, _)| verified)
    }

    /// The claims and the shared token, and whether they came from the cache.
    async fn verify_uncounted(&self, token: &str, binding: &str) -> Option<((Arc<AppClaims>, Arc<str>), bool)> {
        let now = chrono::Utc::now().timestamp();
        // The connection's last token first (see `memo`), then the shared cache:
        // either way the binding, expiry and revocation are checked here.
        let (hit, remembered) = match crate::memo::token(token) {
            Some(hit) => (Some(hit), true),
            None => (self.cache.get(token), false),
        };
        if let Some((c, t)) = hit {
            let good = c.binding == binding && c.exp > now && !self.state.access.refuses(&c);
            if good && !remembered {
                crate::memo::remember_token(t.clone(), c.clone());
            }
            return good.then_some(((c, t), true));
        }
        let claims = match self.verifier.load().verify(token, binding) {
            Err(TokenError::UnknownKey(kid)) => {
                if !self.refetch_for(&kid).await {
                    return None;
                }
                self.verifier.load().verify(token, binding).ok()?
            }
            other => other.ok()?,
        };
        if self.state.access.refuses(&claims) {
            return None;
        }
        let verified = (Arc::new(claims), Arc::<str>::from(token));
        self.cache.insert(token.to_owned(), verified.clone());
        crate::memo::remember_token(verified.1.clone(), verified.0.clone());
        Some((verified, false))
    }

    /// Whether key `kid` is known after at most one refetch of the keys: for
    /// a key not seen yet (the coordinator rotated, or this proxy has not
    /// registered yet and holds none). Refetches run one at a time, and those
    /// waiting see the keys the running one brought: requests that met the
    /// same new key together all verify (a replica starting under load got a
    /// 502 for one of them). At most one refetch per [`KEY_REFETCH_INTERVAL`],
    /// however many tokens name unknown keys (a forged `kid` must not make
    /// the proxy hammer the coordinator). The lock is held across the fetch on
    /// purpose; only requests with an unknown key ever take it.
    async fn refetch_for(&self, kid: &str) -> bool {
        let mut last = self.last_refetch.lock().await;
        if self.verifier.load().knows(kid) {
            return true;
        }
        let now = std::time::Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < KEY_REFETCH_INTERVAL) {
            return false;
        }
        *last = Some(now);
        self.state.metrics.key_refetches.inc();
        let Ok(keys) = self.coordinator.keys().await else { return false };
        self.set_keys(&keys.keys);
        self.verifier.load().knows(kid)
    }

    /// Trades a login ticket for an app session. The session is good for
    /// this one app, so its cookie is scoped to it: the host of a subdomain
    /// app, the base path of a path app (every path app of a region shares
    /// one host).
    async fn redeem(&self, req: &RequestHeader, host: &str, route: &AppRoute, ticket: &str) -> Reply {
        let clean = local_location(req, APP_TICKET_PARAM);
        let ask = RedeemTicket { ticket: ticket.to_owned(), host: strip_port(host).to_owned() };
        match self.coordinator.redeem_ticket(&ask).await {
            Ok(r) => {
                let name = self.cookie(APP_SESSION_COOKIE, route);
                let cookie =
                    session_cookie(name, &r.app_session_token, route.cookie_path(), None, self.scheme == "https");
                Reply::redirect(303, &clean).with_cookie(cookie)
            }
            Err(ClientError::Api { status, .. }) if status.is_client_error() => {
                // A stale or replayed ticket: start the login again from the clean URL.
                Reply::redirect(303, &clean)
            }
            Err(e) => coordinator_down(&e),
        }
    }

    /// Asks the coordinator for a token, with each app session cookie in
    /// turn until one signs the user in (a planted copy is refused: 401);
    /// `Err` when it could not answer.
    async fn issue(&self, req: &RequestHeader, host: &str, route: &AppRoute) -> Result<Decision, ClientError> {
        let mut sessions = cookie_copies(&req.headers, self.cookie(APP_SESSION_COOKIE, route));
        let mut session = sessions.next();
        let mut ask = IssueAppToken {
            app_session_token: None,
            app: route.req.clone(),
            subdomain: route.subdomain,
            binding: route.binding.clone(),
        };
        let answer = loop {
            ask.app_session_token = session.map(str::to_owned);
            let got = self.coordinator.issue_app_token(&ask).await;
            let refused = matches!(&got, Err(ClientError::Api { status, .. }) if [401, 404].contains(&status.as_u16()));
            session = sessions.next();
            if !refused || session.is_none() {
                break got;
            }
        };
        Ok(match answer {
            Ok(resp) => match self.verify(&resp.token, &route.binding).await {
                Some((claims, token)) => {
                    let path = route.cookie_path();
                    // The browser keeps the cookie through the offline grace:
                    // past its expiry the token is accepted only while the
                    // coordinator cannot renew it, and a browser that dropped
                    // the cookie at expiry would never present it then.
                    let grace = i64::try_from(self.offline_grace.as_secs()).unwrap_or(i64::MAX);
                    let max_age = (claims.exp - chrono::Utc::now().timestamp()).max(0).saturating_add(grace);
                    let name = self.cookie(APP_TOKEN_COOKIE, route);
                    let cookie = session_cookie(name, &token, path, Some(max_age), self.scheme == "https");
                    Decision::Serve { claims, token, set_cookie: Some(cookie) }
                }
                None => Decision::Respond(Reply::page(502, "The coordinator issued a token this proxy cannot verify.")),
            },
            Err(ClientError::Api { status, .. }) if status.as_u16() == 401 => {
                // A path app's address as routed (normalized): the ticket is
                // minted for the app this path names, the same one this
                // request's binding names.
                let target = match &route.path {
                    Some((prefix, rest)) => format!("{}{rest}", prefix.trim_end_matches('/')),
                    None => req.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
                };
                let original = format!("{}://{host}{target}", self.scheme);
                let encoded: String = url::form_urlencoded::byte_serialize(original.as_bytes()).collect();
                let location = format!("{}/api/v2/applications/auth-redirect?redirect_uri={encoded}", self.login_url);
                Decision::Respond(Reply::redirect(303, &location))
            }
            Err(ClientError::Api { status, .. }) if status.as_u16() == 404 || status.as_u16() == 403 => {
                Decision::Respond(Reply::page(404, "There is no such app, or you may not open it."))
            }
            // The coordinator refused the request itself (e.g. a path app asked
            // for at a host that is not this region's access URL).
            Err(ClientError::Api { status, message, .. }) if status.as_u16() == 400 => {
                Decision::Respond(Reply::page(400, &message))
            }
            Err(e) => return Err(e),
        })
    }
}

fn coordinator_down(e: &ClientError) -> Reply {
    tracing::warn!(error = %e, "cannot reach the coordinator to sign a user in");
    Reply::page(503, "Meridian cannot sign you in right now: the coordinator is unreachable. Try again shortly.")
}

/// A cookie the app never sees: HttpOnly, SameSite=Lax, Secure over HTTPS.
fn session_cookie(name: &str, value: &str, path: &str, max_age: Option<i64>, secure: bool) -> String {
    let mut c =
        cookie::Cookie::build((name, value)).path(path).http_only(true).secure(secure).same_site(cookie::SameSite::Lax);
    if let Some(s) = max_age {
        c = c.max_age(cookie::time::Duration::seconds(s));
    }
    c.build().to_string()
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn query_param(req: &RequestHeader, name: &str) -> Option<String> {
    url::form_urlencoded::parse(req.uri.query()?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// This request's path and query without parameter `drop`, as a same-host
/// location: always one leading `/`, never `//` or `/\` (scheme-relative).
pub fn local_location(req: &RequestHeader, drop: &str) -> String {
    let path = format!("/{}", req.uri.path().trim_start_matches(['/', '\\']));
    let kept: Vec<(String, String)> = req
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k != drop)
                .map(|(k, v)| (k.into(), v.into()))
                .collect()
        })
        .unwrap_or_default();
    if kept.is_empty() {
        return path;
    }
    let query: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(kept).finish();
    format!("{path}?{query}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use meridian_regions::api::Share;
    use meridian_regions::app_token::{generate_key, Signer, ISSUER};
    use meridian_regions::client::Credential;

    /// A grant for `127.0.0.1:8080` of `agent` that expired `ago` seconds ago.
    fn expired_grant(signer: &Signer, agent: uuid::Uuid, ago: i64) -> String {
        grant_expiring(signer, agent, chrono::Utc::now().timestamp() - ago)
    }

    /// A grant (an owner's app token) for `127.0.0.1:8080` of `agent`, expiring at `exp`.
    pub(crate) fn grant_expiring(signer: &Signer, agent: uuid::Uuid, exp: i64) -> String {
        let claims = AppClaims {
            iss: ISSUER.into(),
            sub: uuid::Uuid::new_v4().to_string(),
            binding: "host:code--main--dev--alice.test".into(),
            agent_id: agent,
            upstream: "http://127.0.0.1:8080".into(),
            share: Share::Owner,
            sandbox: false,
            cors_passthru: false,
            dial: Default::default(),
            iat: exp - 300,
            nbf: exp - 300,
            exp,
            sid: Some(uuid::Uuid::new_v4()),
        };
        signer.sign(&claims).unwrap()
    }

    /// A mesh stream's grant 573 s past expiry (the probe's: a user who had
    /// signed out) is refused while the coordinator is up, and admitted
    /// within the offline grace only while this relay cannot reach it, or it
    /// cannot renew tokens (its database down).
    #[test]
    fn expired_grants_count_only_while_the_coordinator_is_unreachable() {
        let (der, public) = generate_key("k1", [7; 32]);
        let signer = Signer::new("k1", &der);
        let state = crate::state::ProxyState::new();
        let coordinator = Client::new("http://127.0.0.1:9", Credential::None, reqwest::Client::new());
        let grace = Duration::from_secs(3600);
        let auth = Auth::new(coordinator, "http://login.test", false, grace, state.clone());
        auth.set_keys(&[public]);
        let agent = uuid::Uuid::new_v4();
        let (stale, fresh) = (expired_grant(&signer, agent, 573), expired_grant(&signer, agent, -300));
        let too_old = expired_grant(&signer, agent, 3700);
        // (coordinator reachable, its last answer an error, grant, admitted)
        let cases = [
            (true, false, &stale, false),
            (true, false, &fresh, true),
            (false, true, &stale, true),
            (false, true, &too_old, false),
            // Reachable, but it cannot renew (its database is down): as unreachable.
            (true, true, &stale, true),
            (true, true, &too_old, false),
        ];
        for (reachable, failing, grant, admitted) in cases {
            state.update_registration(|r| {
                r.coordinator_reachable = reachable;
                r.last_error = failing.then(|| "HTTP 503: the coordinator's database is unavailable".to_owned());
            });
            let ago = if grant == &stale {
                "573 s"
            } else if grant == &fresh {
                "not"
            } else {
                "3700 s"
            };
            assert_eq!(
                auth.admits_stream(grant, agent, "127.0.0.1:8080"),
                admitted,
                "expired {ago} ago, coordinator reachable: {reachable}, failing: {failing}"
            );
        }
        assert!(!auth.admits_stream(&fresh, agent, "127.0.0.1:8081"), "another target");
    }

    #[test]
    fn locations_stay_on_this_host() {
        let cases = [
            ("/x?meridian_app_ticket=t", "/x"),
            ("/x?a=1&meridian_app_ticket=t&b=2", "/x?a=1&b=2"),
            ("//evil.example/?meridian_app_ticket=t", "/evil.example/"),
            ("/\\evil.example?meridian_app_ticket=t", "/evil.example"),
            ("/", "/"),
        ];
        for (uri, want) in cases {
            let req = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
            assert_eq!(local_location(&req, APP_TICKET_PARAM), want, "{uri}");
        }
    }

    /// A replica that starts under load holds no keys yet: requests that
    /// meet the coordinator's key together wait for the one refetch and all
    /// verify (one of them got a 502 "cannot verify" in a rolling restart).
    #[tokio::test]
    async fn requests_meeting_an_unknown_key_together_share_one_refetch() {
        let (der, public) = generate_key("k1", [7; 32]);
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let coordinator = format!("http://{}", listener.local_addr().unwrap());
        let counted = fetches.clone();
        // The coordinator's keys endpoint, slow enough for the requests to meet.
        let body = serde_json::to_string(&meridian_regions::api::KeysResponse { keys: vec![public] }).unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut conn, _)) = listener.accept().await {
                let (counted, body) = (counted.clone(), body.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.ends_with(b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        let client = Client::new(&coordinator, Credential::None, reqwest::Client::new());
        let auth = Auth::new(client, "http://login.test", false, Duration::ZERO, crate::state::ProxyState::new());
        let agent = uuid::Uuid::new_v4();
        let token = grant_expiring(&Signer::new("k1", &der), agent, chrono::Utc::now().timestamp() + 300);
        let binding = "host:code--main--dev--alice.test";
        let (a, b, c) =
            tokio::join!(auth.verify(&token, binding), auth.verify(&token, binding), auth.verify(&token, binding));
        assert!(a.is_some() && b.is_some() && c.is_some(), "a request that met the new key together was refused");
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1, "one refetch for all of them");
        // A forged key id right after: refused without another fetch.
        let forged = token.replacen("eyJ", "eyJraWQiOiJrOSIsImFsZyI6IkVkRFNBIn0.X", 1);
        assert!(auth.verify(&forged, binding).await.is_none());
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
