//! A typed client of the coordinator API, shared by proxies and the CLI.
//!
//! Every call has a timeout, and failures come back as a [`ClientError`] that
//! says which side failed, so callers can decide whether to retry (the
//! coordinator was unreachable or answered 5xx) or give up (the request was
//! refused, e.g. a revoked token).

use crate::api::*;
use crate::headers;
use crate::token::Secret;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

/// Per-request timeout for control-plane calls; they are small JSON exchanges.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The coordinator could not be reached (refused, reset, timed out). Retry.
    #[error("coordinator unreachable at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The coordinator answered with an error status. `retryable` is true for 5xx.
    #[error("{message} (HTTP {status}){}", if .detail.is_empty() { String::new() } else { format!(": {}", .detail) })]
    Api { status: StatusCode, message: String, detail: String },
    /// The coordinator answered 2xx with a body this client cannot read.
    #[error("unreadable answer from the coordinator: {0}")]
    Decode(String),
}

/// A filter type as a URL query string (its unset fields left out).
fn query_string(q: &impl Serialize) -> Result<String, ClientError> {
    serde_urlencoded::to_string(q).map_err(|e| ClientError::Decode(format!("cannot encode the query: {e}")))
}

impl ClientError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { status, .. } => status.is_server_error(),
            ClientError::Decode(_) => false,
        }
    }

    /// The HTTP status the coordinator answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An HTTP client for control-plane calls that trusts the public roots and,
/// if given, one extra PEM CA file (for self-signed deployments).
pub fn http_client(ca_cert: Option<&Path>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(DEFAULT_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .dns_resolver(crate::resolve::for_reqwest());
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read CA certificate {}: {e}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("{} is not a PEM certificate: {e}", path.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().map_err(|e| format!("cannot build HTTP client: {e}"))
}

/// Which credential a client sends.
#[derive(Debug, Clone)]
pub enum Credential {
    None,
    Session(Secret),
    Proxy(Secret),
    Agent(Secret),
}

/// A coordinator API client bound to one base URL and one credential.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    credential: Credential,
}

impl Client {
    /// `base` is the coordinator's access URL, e.g. `http://127.0.0.1:7080`;
    /// `http` comes from [`http_client`].
    pub fn new(base: &str, credential: Credential, http: reqwest::Client) -> Self {
        Self { http, base: base.trim_end_matches('/').to_owned(), credential }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub async fn buildinfo(&self) -> Result<BuildInfo, ClientError> {
        self.call(Method::GET, "/api/v2/buildinfo", None::<&()>).await
    }

    pub async fn first_user(&self, username: &str, password: &str) -> Result<FirstUserResponse, ClientError> {
        let body = serde_json::json!({ "username": username, "password": password });
        self.call(Method::POST, "/api/v2/users/first", Some(&body)).await
    }

    /// Trades a one-time code from the CLI sign-in page, and the PKCE
    /// verifier its challenge came from, for a session.
    pub async fn cli_token(&self, code: &str, verifier: &str) -> Result<LoginResponse, ClientError> {
        let body = serde_json::json!({ "code": code, "verifier": verifier });
        self.call(Method::POST, "/api/v2/users/cli-auth/token", Some(&body)).await
    }

    pub async fn login(&self, username: &str, password: &str) -> Result<LoginResponse, ClientError> {
        let body = serde_json::json!({ "username": username, "password": password });
        self.call(Method::POST, "/api/v2/users/login", Some(&body)).await
    }

    pub async fn me(&self) -> Result<User, ClientError> {
        self.call(Method::GET, "/api/v2/users/me", None::<&()>).await
    }

    pub async fn create_user(&self, username: &str, password: &str, admin: bool) -> Result<User, ClientError> {
        let body = serde_json::json!({ "username": username, "password": password, "admin": admin });
        self.call(Method::POST, "/api/v2/users", Some(&body)).await
    }

    /// Every user and how they stand (admins).
    pub async fn users(&self) -> Result<crate::api::UserList, ClientError> {
        self.call(Method::GET, "/api/v2/users", None::<&()>).await
    }

    /// Suspends (`true`) or reactivates user `name` (admins).
    pub async fn set_user_suspended(
        &self,
        name: &str,
        suspended: bool,
    ) -> Result<crate::api::UserSummary, ClientError> {
        let status = if suspended { "suspend" } else { "activate" };
        self.call(Method::PUT, &format!("/api/v2/users/{name}/status/{status}"), None::<&()>).await
    }

    /// User `name`'s live sign-in sessions.
    pub async fn user_sessions(&self, name: &str) -> Result<crate::api::SessionList, ClientError> {
        self.call(Method::GET, &format!("/api/v2/users/{name}/sessions"), None::<&()>).await
    }

    /// Ends every session of user `name`; regions cut what their tokens opened.
    pub async fn revoke_sessions(&self, name: &str) -> Result<crate::api::SessionsRevoked, ClientError> {
        self.call(Method::DELETE, &format!("/api/v2/users/{name}/sessions"), None::<&()>).await
    }

    /// Ends one session of user `name`.
    pub async fn revoke_session(&self, name: &str, id: uuid::Uuid) -> Result<(), ClientError> {
        let path = format!("/api/v2/users/{name}/sessions/{id}");
        self.call::<serde_json::Value>(Method::DELETE, &path, None::<&()>).await.map(drop)
    }

    pub async fn regions(&self) -> Result<RegionList, ClientError> {
        self.call(Method::GET, "/api/v2/regions", None::<&()>).await
    }

    pub async fn create_region(&self, req: &CreateRegion) -> Result<CreateRegionResponse, ClientError> {
        self.call(Method::POST, "/api/v2/regions", Some(req)).await
    }

    pub async fn update_region(&self, name: &str, req: &crate::api::PatchRegion) -> Result<Region, ClientError> {
        self.call(Method::PATCH, &format!("/api/v2/regions/{name}"), Some(req)).await
    }

    pub async fn delete_region(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/api/v2/regions/{name}");
        self.call::<serde_json::Value>(Method::DELETE, &path, None::<&()>).await.map(drop)
    }

    pub async fn regenerate_token(&self, name: &str) -> Result<RegenerateTokenResponse, ClientError> {
        let path = format!("/api/v2/regions/{name}/regenerate-token");
        self.call(Method::POST, &path, None::<&()>).await
    }

    pub async fn create_workspace(&self, req: &CreateWorkspace) -> Result<CreateWorkspaceResponse, ClientError> {
        self.call(Method::POST, "/api/v2/workspaces", Some(req)).await
    }

    /// The caller's workspaces, or another user's (admins), or `all` (admins).
    pub async fn workspaces(&self, owner: Option<&str>) -> Result<WorkspaceList, ClientError> {
        let path = match owner {
            Some(o) => format!("/api/v2/workspaces?owner={o}"),
            None => "/api/v2/workspaces".to_owned(),
        };
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// As an admin: a page of the audit log matching `q`.
    pub async fn audit_log(&self, q: &crate::api::AuditQuery) -> Result<crate::api::AuditLog, ClientError> {
        self.call(Method::GET, &format!("/api/v2/audit-log?{}", query_string(q)?), None::<&()>).await
    }

    /// A page of the connection log matching `q` (a member sees only their own).
    pub async fn connection_log(
        &self,
        q: &crate::connection_log::ConnectionQuery,
    ) -> Result<crate::connection_log::ConnectionLog, ClientError> {
        self.call(Method::GET, &format!("/api/v2/connection-log?{}", query_string(q)?), None::<&()>).await
    }

    /// As a proxy: stores a batch of its region's connection records (within `timeout`).
    pub async fn ship_connection_log(
        &self,
        batch: &crate::connection_log::Batch,
        timeout: Duration,
    ) -> Result<crate::connection_log::Stored, ClientError> {
        self.call_timeout(Method::POST, "/api/v2/proxies/me/connection-log", Some(batch), Some(timeout)).await
    }

    pub async fn delete_workspace(&self, owner: &str, name: &str) -> Result<(), ClientError> {
        let path = format!("/api/v2/workspaces/{owner}/{name}");
        self.call::<serde_json::Value>(Method::DELETE, &path, None::<&()>).await.map(drop)
    }

    /// As an agent: publish the public half of its SSH host key.
    pub async fn agent_host_key(&self, req: &crate::api::AgentHostKey) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::POST, "/api/v2/agents/me/host-key", Some(req)).await.map(drop)
    }

    /// As a user: a token for a shell or TCP stream into `owner`'s workspace.
    pub async fn stream_token(
        &self,
        owner: &str,
        workspace: &str,
        req: &crate::api::StreamTokenRequest,
    ) -> Result<crate::api::StreamTokenResponse, ClientError> {
        let path = format!("/api/v2/workspaces/{owner}/{workspace}/stream-token");
        self.call(Method::POST, &path, Some(req)).await
    }

    /// As an agent: where to attach.
    pub async fn agent_connection_info(
        &self,
        preferred_region: Option<&str>,
    ) -> Result<AgentConnectionInfo, ClientError> {
        let path = match preferred_region {
            Some(r) => format!("/api/v2/agents/me/connection-info?region={r}"),
            None => "/api/v2/agents/me/connection-info".to_owned(),
        };
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// As a proxy: check an agent's token and record that it attached here.
    pub async fn agent_attach(&self, req: &AgentAttach) -> Result<AgentAttachResponse, ClientError> {
        self.call(Method::POST, "/api/v2/proxies/me/agent-attach", Some(req)).await
    }

    pub async fn agent_detach(&self, req: &AgentDetach) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::POST, "/api/v2/proxies/me/agent-detach", Some(req)).await.map(drop)
    }

    /// Route changes after `after`, waiting up to `wait` for one (a long
    /// poll); with `after` = `None`, every current route at once.
    pub async fn routes(&self, after: Option<i64>, wait: Duration) -> Result<RouteUpdate, ClientError> {
        let path = match after {
            Some(v) => format!("/api/v2/proxies/me/routes?after={v}&wait_ms={}", wait.as_millis()),
            None => "/api/v2/proxies/me/routes".to_owned(),
        };
        self.call_timeout(Method::GET, &path, None::<&()>, Some(wait + DEFAULT_TIMEOUT)).await
    }

    pub async fn keys(&self) -> Result<KeysResponse, ClientError> {
        self.call(Method::GET, "/api/v2/proxies/me/keys", None::<&()>).await
    }

    pub async fn redeem_ticket(&self, req: &RedeemTicket) -> Result<RedeemTicketResponse, ClientError> {
        self.call(Method::POST, "/api/v2/proxies/me/redeem-ticket", Some(req)).await
    }

    pub async fn issue_app_token(&self, req: &IssueAppToken) -> Result<IssueAppTokenResponse, ClientError> {
        self.call(Method::POST, "/api/v2/proxies/me/issue-app-token", Some(req)).await
    }

    pub async fn register(&self, req: &RegisterProxy) -> Result<RegisterProxyResponse, ClientError> {
        self.call(Method::POST, "/api/v2/proxies/me/register", Some(req)).await
    }

    pub async fn deregister(&self, req: &DeregisterProxy) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::POST, "/api/v2/proxies/me/deregister", Some(req)).await.map(drop)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        self.call_timeout(method, path, body, None).await
    }

    /// [`Client::call`] with a timeout other than the client's own.
    async fn call_timeout<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Option<Duration>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        req = match &self.credential {
            Credential::None => req,
            Credential::Session(s) => req.header(headers::SESSION_TOKEN, s.expose()),
            Credential::Proxy(s) => req.header(headers::PROXY_TOKEN, s.expose()),
            Credential::Agent(s) => req.header(headers::AGENT_TOKEN, s.expose()),
        };
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|source| ClientError::Unreachable { url: url.clone(), source })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|source| ClientError::Unreachable { url: url.clone(), source })?;
        if !status.is_success() {
            let (message, detail) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => (e.message, e.detail),
                Err(_) => (
                    status.canonical_reason().unwrap_or("error").to_owned(),
                    String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                ),
            };
            return Err(ClientError::Api { status, message, detail });
        }
        // An empty 2xx body reads as JSON null, for calls that return nothing.
        let bytes = if bytes.is_empty() { &b"null"[..] } else { &bytes[..] };
        serde_json::from_slice(bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }
}

/// The error and its causes in one line (reqwest's Display omits the causes).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
