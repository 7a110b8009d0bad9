//! The proxy's configuration: flags, `MERIDIAN_*` environment variables and
//! an optional TOML file (`--config`), in that order of precedence.

use meridian_regions::token::{Secret, Token};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;
use uuid::Uuid;

/// `meridian proxy` options. Field docs are the `--help` text.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// TOML file with any of these options (flags and environment win over it).
    #[arg(long, env = "MERIDIAN_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The coordinator's URL, e.g. https://meridian.example.com (required).
    #[arg(long, env = "MERIDIAN_COORDINATOR_URL")]
    pub coordinator_url: Option<Url>,
    /// This region's proxy token, `<region-id>:<secret>` (required).
    #[arg(long, env = "MERIDIAN_PROXY_TOKEN", hide_env_values = true)]
    pub proxy_token: Option<Secret>,
    /// Address to listen on; port 0 picks a free one (see --ready-file) [default: 127.0.0.1:7081].
    #[arg(long, env = "MERIDIAN_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Once listening, write the bound addresses here as JSON (`pid`, `listen`,
    /// `relay`, `access_url`), replaced whole [default: none].
    #[arg(long, env = "MERIDIAN_READY_FILE")]
    pub ready_file: Option<PathBuf>,
    /// URL users reach this region at; a port of 0 means the port --listen bound [default: http(s)://<listen>].
    #[arg(long, env = "MERIDIAN_ACCESS_URL")]
    pub access_url: Option<Url>,
    /// Wildcard host for subdomain apps, e.g. `*.sydney.localhost:7081`; a port
    /// of 0 means the port --listen bound [default: none, path apps only].
    #[arg(long, env = "MERIDIAN_WILDCARD_ACCESS_URL")]
    pub wildcard_access_url: Option<String>,
    /// PEM certificate chain (a wildcard certificate) for HTTPS [default: plain HTTP].
    #[arg(long, env = "MERIDIAN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "MERIDIAN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Extra PEM CA certificate to trust for the coordinator's HTTPS [default: public roots only].
    #[arg(long, env = "MERIDIAN_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// This replica's id; replicas of one region share the token [default: derived from
    /// the hostname, --listen and --access-url, so a restarted proxy is the same replica].
    #[arg(long, env = "MERIDIAN_REPLICA_ID")]
    pub replica_id: Option<Uuid>,
    /// How long in-flight requests may finish after SIGTERM [default: 15s].
    #[arg(long, env = "MERIDIAN_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub drain_timeout: Option<Duration>,
    /// How long a byte pipe this relay carries for a peer (a mesh stream) may
    /// move nothing before it is closed [default: 1h].
    #[arg(long, env = "MERIDIAN_PIPE_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub pipe_idle_timeout: Option<Duration>,
    /// After SIGTERM, how long to keep accepting with `/readyz` answering 503,
    /// so a load balancer (a Kubernetes Service) stops sending new connections
    /// before the listener closes [default: 0s].
    #[arg(long, env = "MERIDIAN_SHUTDOWN_DELAY", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub shutdown_delay: Option<Duration>,
    /// Address agents attach to (this region's relay) [default: 127.0.0.1, any free port].
    #[arg(long, env = "MERIDIAN_RELAY_LISTEN")]
    pub relay_listen: Option<SocketAddr>,
    /// The relay URL agents dial, when they reach it through a load balancer or
    /// NAT [default: http(s)://<access URL host>:<relay port>].
    #[arg(long, env = "MERIDIAN_RELAY_URL")]
    pub relay_url: Option<Url>,
    /// The URL other regions' relays link to, when inter-region traffic takes
    /// another path than agents (a private backbone) [default: --relay-url].
    #[arg(long, env = "MERIDIAN_MESH_URL")]
    pub mesh_url: Option<Url>,
    /// Where browsers sign in: the primary's access URL [default: --coordinator-url].
    #[arg(long, env = "MERIDIAN_LOGIN_URL")]
    pub login_url: Option<Url>,
    /// How long an app may take to send each part of its answer before the client gets
    /// a 504 (not applied to WebSockets and other upgraded connections) [default: 60s].
    #[arg(long, env = "MERIDIAN_APP_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub app_timeout: Option<Duration>,
    /// Worker threads for the data plane [default: 2].
    #[arg(long, env = "MERIDIAN_THREADS")]
    pub threads: Option<usize>,
    /// While the coordinator is unreachable, keep accepting app tokens that expired
    /// up to this long ago (their signature must still be valid) [default: 1h].
    #[arg(long, env = "MERIDIAN_OFFLINE_GRACE", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub offline_grace: Option<Duration>,
    /// Most open client connections in all [default: 16384].
    #[arg(long, env = "MERIDIAN_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most open connections from one client address [default: 512].
    #[arg(long, env = "MERIDIAN_MAX_CONNECTIONS_PER_CLIENT")]
    pub max_connections_per_client: Option<usize>,
    /// Longest time a client may take to send a whole request head (slowloris cut-off)
    /// before a 408 [default: 10s].
    #[arg(long, env = "MERIDIAN_HEADER_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub header_timeout: Option<Duration>,
    /// How long an idle keep-alive connection stays open between requests [default: 60s].
    #[arg(long, env = "MERIDIAN_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub idle_timeout: Option<Duration>,
    /// Longest request line in bytes; longer gets a 414 [default: 8192].
    #[arg(long, env = "MERIDIAN_MAX_REQUEST_LINE")]
    pub max_request_line: Option<usize>,
    /// Most bytes of request header fields; more gets a 431 [default: 32768].
    #[arg(long, env = "MERIDIAN_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Most request header fields; more gets a 431 [default: 100].
    #[arg(long, env = "MERIDIAN_MAX_HEADERS")]
    pub max_headers: Option<usize>,
    /// Where this proxy keeps state: its connection log until the coordinator stores it
    /// (`connection-log/`). One directory per replica [default: $STATE_DIRECTORY, else
    /// $XDG_STATE_HOME/meridian/proxy, else ~/.local/state/meridian/proxy].
    #[arg(long, env = "MERIDIAN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Most disk the connection log may hold while the coordinator cannot take it, in MiB;
    /// past it records are dropped and counted [default: 1024].
    #[arg(long, env = "MERIDIAN_CONNECTION_LOG_MAX_DISK_MIB")]
    pub connection_log_max_disk_mib: Option<u64>,
    /// An app session (a user's requests to one app from one address) ends in the
    /// connection log after this long without a request [default: 60s].
    #[arg(long, env = "MERIDIAN_APP_SESSION_IDLE", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub app_session_idle: Option<Duration>,
    /// Record no connection log: who reached what through this region leaves no trace
    /// (for measuring what the log costs; not for production).
    #[arg(long, env = "MERIDIAN_NO_CONNECTION_LOG")]
    #[serde(default)]
    pub no_connection_log: bool,
}

/// Where and how the connection log is kept.
#[derive(Debug, Clone)]
pub struct ConnectionLogConfig {
    /// None with --no-connection-log.
    pub dir: Option<PathBuf>,
    pub max_disk_bytes: u64,
    pub app_session_idle: Duration,
}

/// Limits on what one client may hold or send.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_request_line: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub coordinator_url: Url,
    pub proxy_token: Secret,
    pub listen: SocketAddr,
    pub ready_file: Option<PathBuf>,
    pub access_url: Url,
    pub wildcard_access_url: Option<String>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub ca_cert: Option<PathBuf>,
    pub replica_id: Uuid,
    /// `replica_id` came from --replica-id (else it is derived, and settled with the bound port).
    pub replica_id_given: bool,
    pub drain_timeout: Duration,
    pub shutdown_delay: Duration,
    pub pipe_idle_timeout: Duration,
    pub threads: usize,
    pub relay_listen: SocketAddr,
    pub relay_url: Option<Url>,
    pub mesh_url: Option<Url>,
    pub login_url: Url,
    pub app_timeout: Duration,
    pub offline_grace: Duration,
    pub limits: Limits,
    pub connection_log: ConnectionLogConfig,
}

/// A configuration problem, reported in one line (exit status 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Args {
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(format!("invalid proxy config: {e}")))
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

    fn or(self, file: Self) -> Self {
        Self {
            config: self.config,
            coordinator_url: self.coordinator_url.or(file.coordinator_url),
            proxy_token: self.proxy_token.or(file.proxy_token),
            listen: self.listen.or(file.listen),
            ready_file: self.ready_file.or(file.ready_file),
            access_url: self.access_url.or(file.access_url),
            wildcard_access_url: self.wildcard_access_url.or(file.wildcard_access_url),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            ca_cert: self.ca_cert.or(file.ca_cert),
            replica_id: self.replica_id.or(file.replica_id),
            drain_timeout: self.drain_timeout.or(file.drain_timeout),
            shutdown_delay: self.shutdown_delay.or(file.shutdown_delay),
            pipe_idle_timeout: self.pipe_idle_timeout.or(file.pipe_idle_timeout),
            threads: self.threads.or(file.threads),
            relay_listen: self.relay_listen.or(file.relay_listen),
            relay_url: self.relay_url.or(file.relay_url),
            mesh_url: self.mesh_url.or(file.mesh_url),
            app_timeout: self.app_timeout.or(file.app_timeout),
            login_url: self.login_url.or(file.login_url),
            offline_grace: self.offline_grace.or(file.offline_grace),
            max_connections: self.max_connections.or(file.max_connections),
            max_connections_per_client: self.max_connections_per_client.or(file.max_connections_per_client),
            header_timeout: self.header_timeout.or(file.header_timeout),
            idle_timeout: self.idle_timeout.or(file.idle_timeout),
            max_request_line: self.max_request_line.or(file.max_request_line),
            max_header_bytes: self.max_header_bytes.or(file.max_header_bytes),
            max_headers: self.max_headers.or(file.max_headers),
            data_dir: self.data_dir.or(file.data_dir),
            connection_log_max_disk_mib: self.connection_log_max_disk_mib.or(file.connection_log_max_disk_mib),
            app_session_idle: self.app_session_idle.or(file.app_session_idle),
            no_connection_log: self.no_connection_log || file.no_connection_log,
        }
    }

    pub fn resolve(self) -> Result<Config, ConfigError> {
        let coordinator_url =
            self.coordinator_url.ok_or_else(|| ConfigError("--coordinator-url is required".into()))?;
        let proxy_token = self.proxy_token.ok_or_else(|| ConfigError("--proxy-token is required".into()))?;
        Token::parse(proxy_token.expose()).map_err(|e| ConfigError(format!("--proxy-token: {e}")))?;
        let listen = self.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7081)));
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err(ConfigError("--tls-cert and --tls-key go together".into())),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let access_url = match self.access_url {
            Some(u) => u,
            None => Url::parse(&format!("{scheme}://{listen}")).map_err(|e| ConfigError(e.to_string()))?,
        };
        for (flag, url) in [("--coordinator-url", &coordinator_url), ("--access-url", &access_url)] {
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(ConfigError(format!("{flag} {url} must be an http(s) URL with a host")));
            }
        }
        if let Some(w) = &self.wildcard_access_url {
            meridian_regions::ready::check_wildcard(w)
                .map_err(|e| ConfigError(format!("--wildcard-access-url {w:?}: {e}")))?;
        }
        let threads = self.threads.unwrap_or(2);
        if !(1..=256).contains(&threads) {
            return Err(ConfigError("--threads must be between 1 and 256".into()));
        }
        let replica_id = self.replica_id.unwrap_or_else(|| default_replica_id(listen, &access_url));
        let login_url = self.login_url.unwrap_or_else(|| coordinator_url.clone());
        let limits = Limits {
            max_connections: self.max_connections.unwrap_or(16_384),
            max_connections_per_client: self.max_connections_per_client.unwrap_or(512),
            header_timeout: self.header_timeout.unwrap_or(Duration::from_secs(10)),
            idle_timeout: self.idle_timeout.unwrap_or(Duration::from_secs(60)),
            max_request_line: self.max_request_line.unwrap_or(8 * 1024),
            max_header_bytes: self.max_header_bytes.unwrap_or(32 * 1024),
            max_headers: self.max_headers.unwrap_or(100),
        };
        let positive = [
            ("--max-connections", limits.max_connections),
            ("--max-connections-per-client", limits.max_connections_per_client),
            ("--max-request-line", limits.max_request_line),
            ("--max-header-bytes", limits.max_header_bytes),
            ("--max-headers", limits.max_headers),
        ];
        if let Some((flag, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError(format!("{flag} must be at least 1")));
        }
        if limits.max_headers > 250 {
            return Err(ConfigError("--max-headers can be at most 250".into()));
        }
        if limits.header_timeout.is_zero() || limits.idle_timeout < Duration::from_secs(1) {
            return Err(ConfigError("--header-timeout and --idle-timeout must be at least 1s".into()));
        }
        let connection_log = ConnectionLogConfig {
            dir: match (self.no_connection_log, self.data_dir) {
                (true, _) => None,
                (false, Some(dir)) => Some(dir.join("connection-log")),
                (false, None) => Some(default_data_dir()?.join("connection-log")),
            },
            max_disk_bytes: match self.connection_log_max_disk_mib.unwrap_or(1024) {
                0 => return Err(ConfigError("--connection-log-max-disk-mib must be at least 1".into())),
                mib => mib.saturating_mul(1 << 20),
            },
            app_session_idle: self.app_session_idle.unwrap_or(Duration::from_secs(60)),
        };
        if connection_log.app_session_idle < Duration::from_secs(1) {
            return Err(ConfigError("--app-session-idle must be at least 1s".into()));
        }
        Ok(Config {
            coordinator_url,
            proxy_token,
            listen,
            ready_file: self.ready_file,
            access_url,
            wildcard_access_url: self.wildcard_access_url,
            tls,
            ca_cert: self.ca_cert,
            replica_id,
            replica_id_given: self.replica_id.is_some(),
            drain_timeout: self.drain_timeout.unwrap_or(Duration::from_secs(15)),
            shutdown_delay: self.shutdown_delay.unwrap_or_default(),
            pipe_idle_timeout: self.pipe_idle_timeout.unwrap_or(meridian_regions::pipe::DEFAULT_IDLE),
            threads,
            relay_listen: self.relay_listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            relay_url: self.relay_url,
            mesh_url: self.mesh_url,
            login_url,
            app_timeout: self.app_timeout.unwrap_or(Duration::from_secs(60)),
            offline_grace: self.offline_grace.unwrap_or(Duration::from_secs(3600)),
            limits,
            connection_log,
        })
    }
}

impl Config {
    /// Binds the app and relay listeners and settles what names their ports:
    /// `listen` and `relay_listen` become the bound addresses, a port of 0 in
    /// the access URLs the app listener's, and a replica id not given is
    /// derived from the settled values.
    pub fn bind(&mut self) -> anyhow::Result<crate::Listeners> {
        use anyhow::Context;
        use meridian_regions::ready;
        let app = ready::bind(self.listen).with_context(|| format!("cannot listen on {}", self.listen))?;
        let relay = ready::bind(self.relay_listen)
            .with_context(|| format!("cannot listen for agents on {}", self.relay_listen))?;
        self.listen = app.local_addr()?;
        self.relay_listen = relay.local_addr()?;
        let port = self.listen.port();
        ready::settle_url(&mut self.access_url, port);
        if let Some(w) = &mut self.wildcard_access_url {
            ready::settle_wildcard(w, port);
        }
        if !self.replica_id_given {
            self.replica_id = default_replica_id(self.listen, &self.access_url);
        }
        Ok(crate::Listeners { app, relay })
    }
}

/// The state directory when --data-dir is not given (systemd's, else XDG's).
fn default_data_dir() -> Result<PathBuf, ConfigError> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("STATE_DIRECTORY") {
        // systemd's StateDirectory= may list several, separated by colons: the first.
        let first = dir.to_string_lossy().split(':').next().unwrap_or_default().to_owned();
        return Ok(PathBuf::from(first));
    }
    let base = var("XDG_STATE_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".local/state")))
        .ok_or_else(|| ConfigError("set --data-dir (no HOME to default from)".into()))?;
    Ok(base.join("meridian/proxy"))
}

/// A replica id that stays the same when the same proxy restarts on the same
/// host, and differs between replicas on different hosts or ports.
fn default_replica_id(listen: SocketAddr, access_url: &Url) -> Uuid {
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let identity = format!("meridian-proxy://{host}/{listen}/{access_url}");
    Uuid::new_v5(&Uuid::NAMESPACE_URL, identity.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "6f1c1b0e-8d7b-4f57-9a55-1e0c8f3b2a10:s3cret";

    #[test]
    fn minimal_config_gets_defaults() {
        let toml = format!("coordinator_url = \"http://127.0.0.1:7080\"\nproxy_token = \"{TOKEN}\"\n");
        let c = Args::from_toml(&toml).unwrap().resolve().unwrap();
        assert_eq!(c.listen.port(), 7081);
        assert_eq!(c.access_url.as_str(), "http://127.0.0.1:7081/");
        assert!(!format!("{c:?}").contains("s3cret"), "the token never prints");
        let again = Args::from_toml(&toml).unwrap().resolve().unwrap();
        assert_eq!(c.replica_id, again.replica_id, "a restart keeps the replica id");
        let other = Args::from_toml(&format!("{toml}listen = \"127.0.0.1:7082\"\n")).unwrap().resolve().unwrap();
        assert_ne!(c.replica_id, other.replica_id, "another port is another replica");
    }

    #[test]
    fn bad_configs_are_refused() {
        let cases = [
            String::new(),
            "coordinator_url = \"http://x\"".to_owned(),
            "coordinator_url = \"http://x\"\nproxy_token = \"nocolon\"".to_owned(),
            format!("coordinator_url = \"ftp://x\"\nproxy_token = \"{TOKEN}\""),
            format!("coordinator_url = \"http://x\"\nproxy_token = \"{TOKEN}\"\nwildcard_access_url = \"x.com\""),
            format!("coordinator_url = \"http://x\"\nproxy_token = \"{TOKEN}\"\nthreads = 0"),
            format!("coordinator_url = \"http://x\"\nproxy_token = \"{TOKEN}\"\nmax_headers = 0"),
            format!("coordinator_url = \"http://x\"\nproxy_token = \"{TOKEN}\"\nheader_timeout = \"0s\""),
        ];
        for bad in cases {
            assert!(Args::from_toml(&bad).and_then(Args::resolve).is_err(), "{bad}");
        }
        assert!(Args::from_toml("bogus = 1").is_err());
    }
}
