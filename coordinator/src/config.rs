//! The coordinator's configuration: flags, `MERIDIAN_*` environment variables
//! and an optional TOML file (`--config`), in that order of precedence.
//!
//! [`Args`] is what a user writes (every field optional, so a file and the
//! command line can each give part); [`Args::resolve`] applies defaults and
//! validates, giving a [`Config`] the rest of the crate trusts.

use meridian_regions::token::Secret;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// `meridian coordinator` options. Field docs are the `--help` text.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// TOML file with any of these options (flags and environment win over it).
    #[arg(long, env = "MERIDIAN_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free one (see --ready-file) [default: 127.0.0.1:7080].
    #[arg(long, env = "MERIDIAN_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Once serving, write the bound addresses here as JSON (`pid`, `listen`,
    /// `relay`, `internal`, `access_url`), replaced whole [default: none].
    #[arg(long, env = "MERIDIAN_READY_FILE")]
    pub ready_file: Option<PathBuf>,
    /// URL users and proxies reach the coordinator at; a port of 0 means the
    /// port --listen bound [default: http://<listen>].
    #[arg(long, env = "MERIDIAN_ACCESS_URL")]
    pub access_url: Option<Url>,
    /// Wildcard host for the primary's subdomain apps, e.g. `*.localhost:7080`;
    /// a port of 0 means the port --listen bound [default: none].
    #[arg(long, env = "MERIDIAN_WILDCARD_ACCESS_URL")]
    pub wildcard_access_url: Option<String>,
    /// External Postgres, e.g. `postgres://user:pass@host/db` [default: embedded Postgres in --data-dir].
    #[arg(long, env = "MERIDIAN_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,
    /// PEM CA certificate to verify --postgres-url's server with; unless the
    /// URL sets `sslmode`, giving it means `sslmode=verify-full` (TLS, the
    /// certificate chains to this CA and names the host) [default: the URL's
    /// `sslmode` and `sslrootcert`, else `prefer` with the public roots].
    #[arg(long, env = "MERIDIAN_POSTGRES_CA_CERT")]
    pub postgres_ca_cert: Option<PathBuf>,
    /// Most connections this coordinator replica opens to Postgres; size it so
    /// replicas × pool size stays under the server's `max_connections` [default: 16].
    #[arg(long, env = "MERIDIAN_POSTGRES_POOL_SIZE")]
    pub postgres_pool_size: Option<u32>,
    /// Directory for the embedded Postgres, the secrets key, and the primary region's
    /// connection log until stored (`primary-proxy/`) [default: /var/lib/meridian as
    /// root, else ~/.local/share/meridian].
    #[arg(long, env = "MERIDIAN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory of PostgreSQL's server binaries [default: newest /usr/lib/postgresql/*/bin, else PATH].
    #[arg(long, env = "MERIDIAN_POSTGRES_BIN_DIR")]
    pub postgres_bin_dir: Option<PathBuf>,
    /// How often to poll each proxy replica's /healthz-report [default: 10s].
    #[arg(long, env = "MERIDIAN_PROXY_HEALTH_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub proxy_health_interval: Option<Duration>,
    /// How long an app token lasts before its proxy renews it from the user's app session [default: 5m].
    #[arg(long, env = "MERIDIAN_APP_TOKEN_LIFETIME", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub app_token_lifetime: Option<Duration>,
    /// How long audit-log and connection-log records are kept; older ones are deleted
    /// hourly, in small batches [default: 90d].
    #[arg(long, env = "MERIDIAN_LOG_RETENTION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub log_retention: Option<Duration>,
    /// The primary region's app sessions end in the connection log after this long
    /// without a request (as a proxy's `--app-session-idle`) [default: 60s].
    #[arg(long, env = "MERIDIAN_APP_SESSION_IDLE", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub app_session_idle: Option<Duration>,
    /// How often proxies re-register (heartbeat) [default: 15s].
    #[arg(long, env = "MERIDIAN_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub heartbeat_interval: Option<Duration>,
    /// Forget a silent replica after this long once its region has a newer one [default: 5m].
    #[arg(long, env = "MERIDIAN_REPLICA_EXPIRY", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub replica_expiry: Option<Duration>,
    /// A second listener for the API that proxies use (`/api/v2/proxies/...`),
    /// which the public --listen then refuses (404): put it on a port only
    /// proxies can reach (a Kubernetes NetworkPolicy) and point proxies'
    /// --coordinator-url at it. Plain HTTP [default: none; the proxy API is on --listen].
    #[arg(long, env = "MERIDIAN_INTERNAL_LISTEN")]
    pub internal_listen: Option<SocketAddr>,
    /// After SIGTERM, how long to keep accepting with `/readyz` answering 503
    /// before draining, so a load balancer stops sending new connections first [default: 0s].
    #[arg(long, env = "MERIDIAN_SHUTDOWN_DELAY", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub shutdown_delay: Option<Duration>,
    /// PEM certificate chain for HTTPS [default: plain HTTP].
    #[arg(long, env = "MERIDIAN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "MERIDIAN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Extra PEM CA certificate to trust when polling proxies over HTTPS [default: public roots only].
    #[arg(long, env = "MERIDIAN_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// How long an app may take to send each part of its answer before a 504 [default: 60s].
    #[arg(long, env = "MERIDIAN_APP_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub app_timeout: Option<Duration>,
    /// Address agents attach to (the primary region's relay) [default: 127.0.0.1, any free port].
    #[arg(long, env = "MERIDIAN_RELAY_LISTEN")]
    pub relay_listen: Option<SocketAddr>,
    /// The URL agents dial for the primary's relay, when they reach it through
    /// a load balancer [default: http(s)://<access URL host>:<relay port>].
    #[arg(long, env = "MERIDIAN_RELAY_URL")]
    pub relay_url: Option<Url>,
    /// The URL other relays (regions, other coordinator replicas) link to this
    /// replica's relay at, e.g. `http://<pod IP>:7090` [default: --relay-url].
    #[arg(long, env = "MERIDIAN_MESH_URL")]
    pub mesh_url: Option<Url>,
    /// File holding the key that seals secrets in the database; every coordinator
    /// replica needs the same one. Created if missing [default: <data-dir>/secrets.key].
    #[arg(long, env = "MERIDIAN_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// More host names the API answers at besides --access-url's (e.g. an
    /// internal load-balancer name proxies use); IP addresses and `localhost`
    /// are always accepted. Any other `Host` gets 421, which stops DNS rebinding.
    #[arg(long = "allowed-host", value_name = "HOST", env = "MERIDIAN_ALLOWED_HOST", value_delimiter = ',')]
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Serve path apps to users other than their owner, as their `share` says.
    /// Off by default: path apps of every user share one origin per region
    /// (the dashboard's, on the primary). Even when on, such apps run in a CSP
    /// sandbox for everyone but their owner.
    #[arg(long, env = "MERIDIAN_DANGEROUS_ALLOW_PATH_APP_SHARING")]
    #[serde(default)]
    pub dangerous_allow_path_app_sharing: bool,
    /// Let admins open shells and TCP streams into other users' workspaces
    /// (`meridian ssh`, `port-forward`). Off by default: only a workspace's
    /// owner may, as only they may open its owner-only apps.
    #[arg(long, env = "MERIDIAN_DANGEROUS_ALLOW_ADMIN_STREAMS")]
    #[serde(default)]
    pub dangerous_allow_admin_streams: bool,
    /// Open connections one client address may hold. A connection carrying a
    /// proxy or agent token to the API is not counted (proxies and agents
    /// share egress addresses), and counts again if the token is refused [default: 512].
    #[arg(long, env = "MERIDIAN_MAX_CONNECTIONS_PER_CLIENT")]
    pub max_connections_per_client: Option<usize>,
    /// Sign users in through this OpenID Connect provider: its issuer URL,
    /// exactly as its discovery document names it (a trailing `/` matters). Register the redirect URI
    /// `<access URL>/api/v2/users/oidc/callback` with it [default: no OIDC].
    #[arg(long, env = "MERIDIAN_OIDC_ISSUER_URL")]
    pub oidc_issuer_url: Option<String>,
    /// The client ID registered with the provider.
    #[arg(long, env = "MERIDIAN_OIDC_CLIENT_ID", requires = "oidc_issuer_url")]
    pub oidc_client_id: Option<String>,
    /// File holding the client secret (one line) [default: a public client, PKCE only].
    #[arg(long, env = "MERIDIAN_OIDC_CLIENT_SECRET_FILE", requires = "oidc_issuer_url")]
    pub oidc_client_secret_file: Option<PathBuf>,
    /// Scopes to ask for [default: openid,profile,email; add your provider's groups scope if it has one].
    #[arg(long, env = "MERIDIAN_OIDC_SCOPES", value_delimiter = ',')]
    #[serde(default)]
    pub oidc_scopes: Vec<String>,
    /// ID token claim that names the user [default: preferred_username, else the e-mail's local part].
    #[arg(long, env = "MERIDIAN_OIDC_USERNAME_CLAIM")]
    pub oidc_username_claim: Option<String>,
    /// ID token claim listing the user's groups [default: groups].
    #[arg(long, env = "MERIDIAN_OIDC_GROUPS_CLAIM")]
    pub oidc_groups_claim: Option<String>,
    /// Members of any of these groups are admins, others members; the role
    /// follows the groups at every sign-in [default: roles are set in Meridian].
    #[arg(long, env = "MERIDIAN_OIDC_ADMIN_GROUPS", value_delimiter = ',')]
    #[serde(default)]
    pub oidc_admin_groups: Vec<String>,
    /// Only members of any of these groups may sign in; someone who left them
    /// is suspended at their next sign-in [default: everyone the provider signs in].
    #[arg(long, env = "MERIDIAN_OIDC_ALLOWED_GROUPS", value_delimiter = ',')]
    #[serde(default)]
    pub oidc_allowed_groups: Vec<String>,
    /// Only verified e-mail addresses in these domains may sign in [default: any].
    #[arg(long, env = "MERIDIAN_OIDC_ALLOWED_EMAIL_DOMAINS", value_delimiter = ',')]
    #[serde(default)]
    pub oidc_allowed_email_domains: Vec<String>,
    /// The provider's name on the sign-in page ("Sign in with ...") [default: OpenID Connect].
    #[arg(long, env = "MERIDIAN_OIDC_PROVIDER_NAME")]
    pub oidc_provider_name: Option<String>,
    /// How often each linked user's refresh token is used with the provider;
    /// one it refuses (the user was disabled there) suspends the user here.
    /// Needs the `offline_access` scope in --oidc-scopes [default: 5m].
    #[arg(long, env = "MERIDIAN_OIDC_REFRESH_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub oidc_refresh_interval: Option<Duration>,
    /// Refuse password sign-in (OIDC only). The first admin of a fresh
    /// install may still be created with a password.
    #[arg(long, env = "MERIDIAN_DISABLE_PASSWORD_AUTH")]
    #[serde(default)]
    pub disable_password_auth: bool,
}

/// OpenID Connect sign-in, resolved.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// As given (the provider's issuer must match it exactly).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub scopes: Vec<String>,
    pub username_claim: Option<String>,
    pub groups_claim: String,
    pub admin_groups: Vec<String>,
    pub allowed_groups: Vec<String>,
    /// Lowercase, without a leading `@`.
    pub allowed_email_domains: Vec<String>,
    pub provider_name: String,
    pub refresh_interval: Duration,
}

/// Where the database is.
#[derive(Debug, Clone)]
pub enum Database {
    /// `--postgres-url`, and the CA to verify it with (`--postgres-ca-cert`).
    External {
        url: Secret,
        ca_cert: Option<PathBuf>,
    },
    Embedded {
        data_dir: PathBuf,
        bin_dir: Option<PathBuf>,
    },
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub ready_file: Option<PathBuf>,
    pub access_url: Url,
    pub wildcard_access_url: Option<String>,
    pub database: Database,
    /// Most open Postgres connections (`--postgres-pool-size`).
    pub postgres_pool_size: u32,
    pub proxy_health_interval: Duration,
    pub heartbeat_interval: Duration,
    pub app_token_lifetime: Duration,
    /// `--log-retention`.
    pub log_retention: Duration,
    /// `--data-dir`, resolved (also with `--postgres-url`: the primary proxy's state).
    pub state_dir: PathBuf,
    pub app_session_idle: Option<Duration>,
    pub replica_expiry: Duration,
    pub shutdown_delay: Duration,
    pub internal_listen: Option<SocketAddr>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub ca_cert: Option<PathBuf>,
    pub secrets_key_file: PathBuf,
    pub relay_listen: SocketAddr,
    pub relay_url: Option<Url>,
    pub mesh_url: Option<Url>,
    pub app_timeout: Option<Duration>,
    /// Host names (lowercase, no port) the API answers at besides the access URL's.
    pub allowed_hosts: Vec<String>,
    pub allow_path_app_sharing: bool,
    /// See `--dangerous-allow-admin-streams`.
    pub allow_admin_streams: bool,
    pub max_connections_per_client: Option<usize>,
    pub oidc: Option<OidcConfig>,
    pub disable_password_auth: bool,
}

/// A configuration problem, reported in one line (exit status 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Args {
    /// Parses a TOML configuration file's text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(format!("invalid coordinator config: {e}")))
    }

    /// Reads `--config` if given and fills what the command line left out.
    pub fn with_file(self) -> Result<Self, ConfigError> {
        let Some(path) = &self.config else {
            return Ok(self);
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Ok(self.or(Self::from_toml(&text)?))
    }

    /// Each field from `self` if set, else from `file`.
    fn or(self, file: Self) -> Self {
        Self {
            config: self.config,
            listen: self.listen.or(file.listen),
            ready_file: self.ready_file.or(file.ready_file),
            access_url: self.access_url.or(file.access_url),
            wildcard_access_url: self.wildcard_access_url.or(file.wildcard_access_url),
            postgres_url: self.postgres_url.or(file.postgres_url),
            postgres_ca_cert: self.postgres_ca_cert.or(file.postgres_ca_cert),
            postgres_pool_size: self.postgres_pool_size.or(file.postgres_pool_size),
            data_dir: self.data_dir.or(file.data_dir),
            postgres_bin_dir: self.postgres_bin_dir.or(file.postgres_bin_dir),
            proxy_health_interval: self.proxy_health_interval.or(file.proxy_health_interval),
            heartbeat_interval: self.heartbeat_interval.or(file.heartbeat_interval),
            app_token_lifetime: self.app_token_lifetime.or(file.app_token_lifetime),
            log_retention: self.log_retention.or(file.log_retention),
            app_session_idle: self.app_session_idle.or(file.app_session_idle),
            replica_expiry: self.replica_expiry.or(file.replica_expiry),
            shutdown_delay: self.shutdown_delay.or(file.shutdown_delay),
            internal_listen: self.internal_listen.or(file.internal_listen),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            ca_cert: self.ca_cert.or(file.ca_cert),
            secrets_key_file: self.secrets_key_file.or(file.secrets_key_file),
            relay_listen: self.relay_listen.or(file.relay_listen),
            relay_url: self.relay_url.or(file.relay_url),
            mesh_url: self.mesh_url.or(file.mesh_url),
            app_timeout: self.app_timeout.or(file.app_timeout),
            allowed_hosts: if self.allowed_hosts.is_empty() { file.allowed_hosts } else { self.allowed_hosts },
            dangerous_allow_path_app_sharing: self.dangerous_allow_path_app_sharing
                || file.dangerous_allow_path_app_sharing,
            dangerous_allow_admin_streams: self.dangerous_allow_admin_streams || file.dangerous_allow_admin_streams,
            max_connections_per_client: self.max_connections_per_client.or(file.max_connections_per_client),
            oidc_issuer_url: self.oidc_issuer_url.or(file.oidc_issuer_url),
            oidc_client_id: self.oidc_client_id.or(file.oidc_client_id),
            oidc_client_secret_file: self.oidc_client_secret_file.or(file.oidc_client_secret_file),
            oidc_scopes: if self.oidc_scopes.is_empty() { file.oidc_scopes } else { self.oidc_scopes },
            oidc_username_claim: self.oidc_username_claim.or(file.oidc_username_claim),
            oidc_groups_claim: self.oidc_groups_claim.or(file.oidc_groups_claim),
            oidc_admin_groups: if self.oidc_admin_groups.is_empty() {
                file.oidc_admin_groups
            } else {
                self.oidc_admin_groups
            },
            oidc_allowed_groups: if self.oidc_allowed_groups.is_empty() {
                file.oidc_allowed_groups
            } else {
                self.oidc_allowed_groups
            },
            oidc_allowed_email_domains: if self.oidc_allowed_email_domains.is_empty() {
                file.oidc_allowed_email_domains
            } else {
                self.oidc_allowed_email_domains
            },
            oidc_provider_name: self.oidc_provider_name.or(file.oidc_provider_name),
            oidc_refresh_interval: self.oidc_refresh_interval.or(file.oidc_refresh_interval),
            disable_password_auth: self.disable_password_auth || file.disable_password_auth,
        }
    }

    /// The OIDC settings, checked (`None` without `--oidc-issuer-url`).
    fn oidc(&self) -> Result<Option<OidcConfig>, ConfigError> {
        let Some(issuer) = self.oidc_issuer_url.clone() else {
            return Ok(None);
        };
        let issuer = issuer.trim().to_owned();
        if !Url::parse(&issuer).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some()) {
            return Err(ConfigError(format!("--oidc-issuer-url {issuer:?} must be an http(s) URL with a host")));
        }
        let client_id = self
            .oidc_client_id
            .clone()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| ConfigError("--oidc-issuer-url needs --oidc-client-id".into()))?;
        let client_secret = match &self.oidc_client_secret_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("cannot read --oidc-client-secret-file {}: {e}", path.display()))
                })?;
                let secret = text.trim().to_owned();
                if secret.is_empty() {
                    return Err(ConfigError(format!("--oidc-client-secret-file {} is empty", path.display())));
                }
                Some(Secret::new(secret))
            }
            None => None,
        };
        let scopes = if self.oidc_scopes.is_empty() {
            ["openid", "profile", "email"].map(String::from).to_vec()
        } else {
            self.oidc_scopes.clone()
        };
        let clean = |list: &[String]| list.iter().map(|g| g.trim().to_owned()).filter(|g| !g.is_empty()).collect();
        Ok(Some(OidcConfig {
            issuer,
            client_id,
            client_secret,
            scopes,
            username_claim: self.oidc_username_claim.clone(),
            groups_claim: self.oidc_groups_claim.clone().unwrap_or_else(|| "groups".into()),
            admin_groups: clean(&self.oidc_admin_groups),
            allowed_groups: clean(&self.oidc_allowed_groups),
            allowed_email_domains: self
                .oidc_allowed_email_domains
                .iter()
                .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
                .filter(|d| !d.is_empty())
                .collect(),
            provider_name: self.oidc_provider_name.clone().unwrap_or_else(|| "OpenID Connect".into()),
            refresh_interval: self
                .oidc_refresh_interval
                .unwrap_or(Duration::from_secs(300))
                .max(Duration::from_secs(1)),
        }))
    }

    /// Applies defaults and checks the result.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let oidc = self.oidc()?;
        let listen = self.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7080)));
        let scheme = if self.tls_cert.is_some() { "https" } else { "http" };
        let access_url = match self.access_url {
            Some(u) => u,
            None => Url::parse(&format!("{scheme}://{listen}")).map_err(|e| ConfigError(e.to_string()))?,
        };
        if !matches!(access_url.scheme(), "http" | "https") || access_url.host().is_none() {
            return Err(ConfigError(format!("--access-url {access_url} must be an http(s) URL with a host")));
        }
        if let Some(w) = &self.wildcard_access_url {
            meridian_regions::ready::check_wildcard(w)
                .map_err(|e| ConfigError(format!("--wildcard-access-url {w:?}: {e}")))?;
        }
        let data_dir = match self.data_dir {
            Some(d) => d,
            None => default_data_dir()?,
        };
        let secrets_key_file = self.secrets_key_file.unwrap_or_else(|| data_dir.join("secrets.key"));
        let state_dir = data_dir.clone();
        let database = match self.postgres_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Database::External { url: Secret::new(url), ca_cert: self.postgres_ca_cert }
            }
            Some(_) => return Err(ConfigError("--postgres-url must start with postgres://".into())),
            None if self.postgres_ca_cert.is_some() => {
                return Err(ConfigError("--postgres-ca-cert needs --postgres-url".into()))
            }
            None => Database::Embedded { data_dir: data_dir.clone(), bin_dir: self.postgres_bin_dir },
        };
        let postgres_pool_size = self.postgres_pool_size.unwrap_or(16);
        if !(1..=1000).contains(&postgres_pool_size) {
            return Err(ConfigError(format!("--postgres-pool-size {postgres_pool_size} must be between 1 and 1000")));
        }
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err(ConfigError("--tls-cert and --tls-key go together".into())),
        };
        if self.disable_password_auth && oidc.is_none() {
            return Err(ConfigError("--disable-password-auth needs --oidc-issuer-url: nobody could sign in".into()));
        }
        let config = Config {
            listen,
            ready_file: self.ready_file,
            access_url,
            wildcard_access_url: self.wildcard_access_url,
            database,
            postgres_pool_size,
            proxy_health_interval: self.proxy_health_interval.unwrap_or(Duration::from_secs(10)),
            heartbeat_interval: self.heartbeat_interval.unwrap_or(Duration::from_secs(15)),
            app_token_lifetime: self.app_token_lifetime.unwrap_or(Duration::from_secs(300)),
            log_retention: self.log_retention.unwrap_or(Duration::from_secs(90 * 86_400)),
            state_dir: state_dir.clone(),
            app_session_idle: self.app_session_idle,
            replica_expiry: self.replica_expiry.unwrap_or(Duration::from_secs(300)),
            shutdown_delay: self.shutdown_delay.unwrap_or_default(),
            internal_listen: self.internal_listen,
            tls,
            ca_cert: self.ca_cert,
            secrets_key_file,
            relay_listen: self.relay_listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            relay_url: self.relay_url,
            mesh_url: self.mesh_url,
            app_timeout: self.app_timeout,
            allowed_hosts: self.allowed_hosts.iter().map(|h| h.trim().to_ascii_lowercase()).collect(),
            allow_path_app_sharing: self.dangerous_allow_path_app_sharing,
            allow_admin_streams: self.dangerous_allow_admin_streams,
            max_connections_per_client: self.max_connections_per_client,
            oidc,
            disable_password_auth: self.disable_password_auth,
        };
        for (name, d) in [
            ("--proxy-health-interval", config.proxy_health_interval),
            ("--heartbeat-interval", config.heartbeat_interval),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
                return Err(ConfigError(format!("{name} must be between 100ms and 1h")));
            }
        }
        if config.app_token_lifetime < Duration::from_secs(1) || config.app_token_lifetime > Duration::from_secs(86_400)
        {
            return Err(ConfigError("--app-token-lifetime must be between 1s and 24h".into()));
        }
        if config.log_retention < Duration::from_secs(3600) || config.log_retention > Duration::from_secs(3650 * 86_400)
        {
            return Err(ConfigError("--log-retention must be between 1h and 10 years".into()));
        }
        Ok(config)
    }
}

fn default_data_dir() -> Result<PathBuf, ConfigError> {
    if nix::unistd::geteuid().is_root() {
        // Root's home is private; the embedded Postgres runs as another user
        // and must reach its directory.
        return Ok(PathBuf::from("/var/lib/meridian"));
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .ok_or_else(|| ConfigError("set --data-dir (no HOME to default from)".into()))?;
    Ok(base.join("meridian"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_fills_what_flags_leave_out() {
        let file = Args::from_toml("listen = \"127.0.0.1:9000\"\nproxy_health_interval = \"2s\"\n").unwrap();
        let cli = Args { proxy_health_interval: Some(Duration::from_secs(1)), ..Args::default() };
        let c = cli.or(file).resolve().unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.proxy_health_interval, Duration::from_secs(1), "the flag wins");
        assert_eq!(c.access_url.as_str(), "http://127.0.0.1:9000/");
    }

    #[test]
    fn bad_configs_are_refused() {
        for bad in ["listen = \"nonsense\"", "unknown_field = 1", "proxy_health_interval = \"10 parsecs\""] {
            assert!(Args::from_toml(bad).is_err(), "{bad}");
        }
        for bad in [
            "postgres_url = \"mysql://x\"",
            "access_url = \"ftp://x\"",
            "wildcard_access_url = \"apps.example.com\"",
            "proxy_health_interval = \"1ms\"",
        ] {
            let args = Args::from_toml(bad).unwrap();
            assert!(args.resolve().is_err(), "{bad}");
        }
    }

    /// The deploy example's OIDC lines, uncommented, make a configuration
    /// (the secret read from its file, never printed); half a one is refused.
    #[test]
    fn oidc_settings_from_the_deploy_example() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret-value\n").unwrap();
        let example = include_str!("../../deploy/coordinator.toml");
        let oidc: String = example
            .lines()
            .filter_map(|l| {
                l.strip_prefix("# ").filter(|l| l.starts_with("oidc_") || l.starts_with("disable_password"))
            })
            .map(|l| {
                if l.starts_with("oidc_client_secret_file") {
                    format!("oidc_client_secret_file = {secret:?}")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = Args::from_toml(&oidc).unwrap().resolve().unwrap();
        let o = c.oidc.as_ref().expect("OIDC is set up");
        assert_eq!(
            (o.client_id.as_str(), o.admin_groups.as_slice()),
            ("meridian", &["meridian-admins".to_owned()][..])
        );
        assert_eq!(
            (o.refresh_interval, o.allowed_email_domains.as_slice()),
            (Duration::from_secs(300), &["example.com".to_owned()][..])
        );
        assert_eq!(o.client_secret.as_ref().map(|s| s.expose()), Some("s3cret-value"));
        assert!(!format!("{c:?}").contains("s3cret-value"));
        for bad in [
            "oidc_issuer_url = \"https://idp\"",
            "disable_password_auth = true",
            "oidc_issuer_url = \"idp\"\noidc_client_id = \"m\"",
        ] {
            assert!(Args::from_toml(bad).unwrap().resolve().is_err(), "{bad}");
        }
    }

    #[test]
    fn postgres_url_never_prints() {
        let args = Args::from_toml("postgres_url = \"postgres://u:hunter2@h/db\"").unwrap();
        let c = args.resolve().unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
