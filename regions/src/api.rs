//! JSON wire types of the coordinator API (`/api/v2/...`).
//!
//! Field names follow ARCHITECTURE.md's external contract. Clients ignore
//! unknown fields, so fields may be added without breaking older proxies.

use crate::health::Status;
pub use crate::model::{Cors, Share};
use crate::token::Secret;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Every error body: `{"message": ..., "detail": ...}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(default)]
    pub detail: String,
}

/// `GET /api/v2/buildinfo`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildInfo {
    pub version: String,
    /// Which role answered: `coordinator` or `proxy`.
    pub role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub admin: bool,
    pub created_at: DateTime<Utc>,
}

/// `POST /api/v2/users/first` and `POST /api/v2/users/login`.
#[derive(Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// `POST /api/v2/users` (admins only).
#[derive(Deserialize)]
pub struct CreateUser {
    pub username: String,
    pub password: Secret,
    #[serde(default)]
    pub admin: bool,
}

/// `GET /api/v2/users` (admins): every user and how they stand.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserList {
    pub users: Vec<UserSummary>,
}

/// A user as the admin page and `meridian users list` show them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserSummary {
    #[serde(flatten)]
    pub user: User,
    /// How they sign in: `password` or `oidc`.
    pub login_type: String,
    /// `active` or `suspended`.
    pub status: String,
    #[serde(default)]
    pub suspended_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_sign_in_at: Option<DateTime<Utc>>,
    /// Their live sign-in sessions (not counting the app sessions under them).
    pub sessions: i64,
}

/// `GET /api/v2/users/{name}/sessions`: a user's live sign-in sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionList {
    pub sessions: Vec<SessionSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionSummary {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// App sessions signed in under it (one per app a region opened).
    pub app_sessions: i64,
}

/// `DELETE /api/v2/users/{name}/sessions`: how many sessions ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionsRevoked {
    pub revoked: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirstUserResponse {
    pub user: User,
    pub session_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    pub session_token: String,
}

/// One region as listed by `GET /api/v2/regions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Region {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    pub status: Status,
    /// `status == ok`, for clients that only want a yes or no.
    pub healthy: bool,
    pub access_url: Option<String>,
    pub wildcard_hostname: Option<String>,
    pub path_app_url: Option<String>,
    pub version: Option<String>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// The replicas serving this region, most recently heard from first.
    #[serde(default)]
    pub replicas: Vec<Replica>,
    /// Round trips from this region to others over its relays' mesh links:
    /// per other region, the best a healthy replica measured.
    #[serde(default)]
    pub links: Vec<LinkRtt>,
}

/// One registered replica of a region.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Replica {
    pub id: Uuid,
    pub access_url: String,
    /// Where agents attach.
    pub relay_address: Option<String>,
    /// Where peer relays link in (the relay address unless set apart).
    #[serde(default)]
    pub mesh_address: Option<String>,
    pub version: String,
    pub status: Status,
    /// The health checker's last error for this replica, if any.
    pub error: Option<String>,
    pub last_heartbeat_at: DateTime<Utc>,
    /// What its relay measured to other regions at its last heartbeat.
    #[serde(default)]
    pub link_rtts: Vec<LinkRtt>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegionList {
    pub regions: Vec<Region>,
}

/// `POST /api/v2/regions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRegion {
    pub name: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// The region's hostnames ([`RegionHosts`]); unset ones are pinned by
    /// the region's first registration.
    #[serde(flatten)]
    pub hosts: RegionHosts,
}

/// The hostnames a region serves, set by an admin (or pinned by the region's
/// first registration). A replica may register any port on these hosts, never
/// another host, so a proxy token cannot claim app hosts it was not given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionHosts {
    /// e.g. `https://sydney.example.com`: where path apps are served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_url: Option<String>,
    /// e.g. `*.sydney.example.com`: where subdomain apps are served; `""` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wildcard_hostname: Option<String>,
}

/// `PATCH /api/v2/regions/{name}` (admins): change the display name or the
/// region's hostnames.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PatchRegion {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(flatten)]
    pub hosts: RegionHosts,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRegionResponse {
    pub region: Region,
    /// Shown once; only its hash is stored.
    pub proxy_token: String,
}

/// `POST /api/v2/regions/{name}/regenerate-token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegenerateTokenResponse {
    pub proxy_token: String,
}

/// `POST /api/v2/proxies/me/register`: the heartbeat of one replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterProxy {
    pub replica_id: Uuid,
    pub access_url: String,
    pub wildcard_hostname: String,
    #[serde(default)]
    pub relay_address: Option<String>,
    /// Where peer relays should link in, if not at `relay_address`.
    #[serde(default)]
    pub mesh_address: Option<String>,
    pub version: String,
    /// Round trips this replica's relay measured over its links to other regions.
    #[serde(default)]
    pub link_rtts: Vec<LinkRtt>,
}

/// A round trip measured over a relay's mesh link to a replica of `region`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRtt {
    pub region: String,
    pub rtt_ms: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterProxyResponse {
    pub region_id: Uuid,
    pub region_name: String,
    /// Re-register (heartbeat) this often.
    pub heartbeat_interval_ms: u64,
    /// Every region, the primary first, so a proxy can steer users.
    pub regions: Vec<Region>,
    /// The other live replicas of this proxy's own region.
    pub sibling_replicas: Vec<Replica>,
    /// Public keys that verify app tokens.
    #[serde(default)]
    pub keys: Vec<crate::app_token::PublicKey>,
    /// What relays present to each other on mesh links (`Meridian-Mesh-Secret`).
    pub mesh_secret: crate::token::Secret,
}

/// `GET /api/v2/proxies/me/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysResponse {
    pub keys: Vec<crate::app_token::PublicKey>,
}

/// `POST /api/v2/proxies/me/redeem-ticket`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedeemTicket {
    pub ticket: String,
    /// The host the ticket arrived at (without port): a ticket is good only
    /// at the host it was minted for, and only for the region serving it.
    #[serde(default)]
    pub host: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedeemTicketResponse {
    /// An app-scoped session for the `meridian_app_session` cookie.
    pub app_session_token: String,
    pub expires_at: DateTime<Utc>,
}

/// `POST /api/v2/proxies/me/issue-app-token`: the proxy asks for a token for
/// the app a request names, on behalf of the app session's user (or anonymously).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssueAppToken {
    #[serde(default)]
    pub app_session_token: Option<String>,
    pub app: crate::app_url::AppRequest,
    /// Whether the request came by subdomain (else by path).
    pub subdomain: bool,
    /// The exact app address the token will be bound to.
    pub binding: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssueAppTokenResponse {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// `POST /api/v2/proxies/me/deregister`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeregisterProxy {
    pub replica_id: Uuid,
}

/// An app as declared at workspace creation: exactly one of `port` and `url`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct App {
    pub slug: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Served on its own subdomain (else on a path under the access URL).
    #[serde(default = "default_true")]
    pub subdomain: bool,
    #[serde(default)]
    pub share: Share,
    /// What happens to the app's own CORS headers [default: `default`, dropped].
    #[serde(default, skip_serializing_if = "Cors::is_default")]
    pub cors: Cors,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSpec {
    pub name: String,
    #[serde(default)]
    pub apps: Vec<App>,
}

/// `POST /api/v2/workspaces`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateWorkspace {
    pub name: String,
    /// Username of the owner; only admins may name someone else. Default: the caller.
    #[serde(default)]
    pub owner: Option<String>,
    pub agents: Vec<AgentSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Agent {
    pub id: Uuid,
    pub name: String,
    pub connected: bool,
    /// The region whose relay holds the agent's tunnel, while connected.
    pub region: Option<String>,
    pub last_connected_at: Option<DateTime<Utc>>,
    pub apps: Vec<App>,
    /// The public half of the agent's SSH host key (`ssh-ed25519 AAAA…`),
    /// once the agent published it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
}

/// `POST /api/v2/agents/me/host-key`: the agent's SSH host key, public half.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentHostKey {
    pub public_key: String,
}

/// `POST /api/v2/workspaces/{owner}/{workspace}/stream-token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamTokenRequest {
    /// The agent; may be left out when the workspace has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// `ssh`, `terminal` or `tcp:PORT`.
    pub target: String,
}

/// A token for one stream, and what the client needs to open it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamTokenResponse {
    /// Sent to a region as `Meridian-Stream-Token`.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// The path to open the stream on, at any region's access URL.
    pub path: String,
    pub agent: String,
    /// The agent's SSH host key, if it published one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
}

/// `GET /api/v2/audit-log` (admins): its filters, all optional, as query
/// parameters. `action` matches exactly or by its kind (`region` matches
/// `region.create`…); `before` pages back (the `next` of the previous page).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// One state change made through the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// Who acted (for a failed sign-in: the name tried).
    pub actor: Option<String>,
    /// `<kind>.<verb>`: `user.create`, `user.login`, `user.login_failed`,
    /// `user.logout`, `region.create`, `region.update`, `region.delete`,
    /// `region.regenerate_token`, `workspace.create`, `workspace.delete`.
    pub action: String,
    /// `user`, `region` or `workspace`.
    pub target_kind: String,
    /// Its name (`owner/name` for a workspace).
    pub target: String,
    /// The client's address as the coordinator saw it.
    pub source: Option<String>,
    /// `{"field": [before, after]}` for the fields that changed; never a secret.
    pub changes: serde_json::Value,
}

/// A page of the audit log, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditLog {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before` for the next (older) page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workspace {
    pub id: Uuid,
    pub name: String,
    pub owner: String,
    pub created_at: DateTime<Utc>,
    pub agents: Vec<Agent>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateWorkspaceResponse {
    pub workspace: Workspace,
    /// Each agent's token, shown once: `{agent name: token}`.
    pub agent_tokens: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceList {
    pub workspaces: Vec<Workspace>,
}

/// `GET /api/v2/agents/me/connection-info` (agent token): where to attach.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentConnectionInfo {
    pub agent_id: Uuid,
    /// The region this agent should attach to when it is healthy.
    #[serde(default)]
    pub preferred_region: Option<String>,
    /// The apps this agent serves; it opens streams only to these and to ports ≥ 1024.
    pub apps: Vec<App>,
    /// Relays to attach to, preferred first.
    pub relays: Vec<RelayInfo>,
    /// Earlier releases' attach token for any region; no longer issued (each
    /// relay in `relays` carries its region's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_token: Option<crate::token::Secret>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayInfo {
    pub region: String,
    /// e.g. `http://127.0.0.1:7091`.
    pub url: String,
    /// Since when this relay's replica has been healthy (agents wait a while
    /// before moving back to their preferred region).
    #[serde(default)]
    pub healthy_since: Option<DateTime<Utc>>,
    /// What the agent presents to this relay (in `Meridian-Agent-Attach-Token`):
    /// a short-lived token for this relay's region alone. The agent token
    /// itself never goes to a relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_token: Option<crate::token::Secret>,
}

/// `POST /api/v2/proxies/me/agent-attach`: a relay records an agent it admitted
/// with the attach token the agent presented (for that relay's region); relays
/// of earlier releases vouch with the agent's own token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentAttach {
    /// The agent's own token, or empty when the relay admitted it offline
    /// with an attach token and records that afterwards.
    #[serde(default)]
    pub agent_token: String,
    #[serde(default)]
    pub attach_token: Option<String>,
    /// The relay's replica, so routes name the exact relay holding the tunnel.
    #[serde(default)]
    pub replica_id: Option<Uuid>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentAttachResponse {
    pub agent_id: Uuid,
}

/// `POST /api/v2/proxies/me/agent-detach`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentDetach {
    pub agent_id: Uuid,
    #[serde(default)]
    pub replica_id: Option<Uuid>,
}

/// `GET /api/v2/proxies/me/routes?after=V&wait=MS`: the route changes after
/// version `V` (all current routes when `V` is 0), answered as soon as there
/// are any, or empty after `wait`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RouteUpdate {
    /// Ask with this next time.
    pub version: i64,
    /// Changes, one per agent.
    #[serde(default)]
    pub routes: Vec<AgentRoute>,
    /// A snapshot's routes, grouped by the relay that holds them: about 40
    /// bytes an agent instead of 150, which matters when a thousand proxy
    /// replicas each take a snapshot of 100,000 agents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<RelayAgents>,
    /// Users whose tokens regions refuse and whose open connections they
    /// cut: their changes, or in a snapshot every user with a refusal.
    /// Carried with routes so a suspension reaches every region as fast as
    /// an agent's move does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<UserAccess>,
}

/// What a region must refuse of one user's tokens: the whole current state
/// for that user (an update replaces what the region held).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAccess {
    pub user_id: Uuid,
    /// Suspended: every token of theirs is refused.
    pub suspended: bool,
    /// Sign-in sessions ended by a revocation: a token minted from one
    /// (its `sid` claim) is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_sessions: Vec<Uuid>,
}

impl UserAccess {
    /// Whether a token of this user minted from session `sid` is refused.
    pub fn refuses(&self, sid: Option<Uuid>) -> bool {
        self.suspended || sid.is_some_and(|s| self.revoked_sessions.contains(&s))
    }

    /// Whether it refuses nothing (the user may be forgotten).
    pub fn is_clear(&self) -> bool {
        !self.suspended && self.revoked_sessions.is_empty()
    }
}

/// The agents attached to one relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayAgents {
    pub region: String,
    pub replica_id: Option<Uuid>,
    pub relay_url: String,
    pub agents: Vec<Uuid>,
}

impl RouteUpdate {
    /// Every route this update carries, grouped ones included.
    pub fn all_routes(&self) -> impl Iterator<Item = AgentRoute> + '_ {
        let grouped = self.relays.iter().flat_map(|r| {
            r.agents.iter().map(move |a| AgentRoute {
                agent_id: *a,
                region: Some(r.region.clone()),
                replica_id: r.replica_id,
                relay_url: Some(r.relay_url.clone()),
            })
        });
        self.routes.iter().cloned().chain(grouped)
    }

    /// Whether it carries no route and no access change at all.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.relays.iter().all(|r| r.agents.is_empty()) && self.access.is_empty()
    }
}

/// Where one agent is attached; `relay_url` is `None` once it detached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRoute {
    pub agent_id: Uuid,
    pub region: Option<String>,
    pub replica_id: Option<Uuid>,
    pub relay_url: Option<String>,
}
