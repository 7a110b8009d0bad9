//! The agent's options: flags or `MERIDIAN_*` environment variables.

use meridian_regions::token::{Secret, Token};
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// `meridian agent` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The coordinator's URL.
    #[arg(long, env = "MERIDIAN_COORDINATOR_URL")]
    pub coordinator_url: Url,
    /// This agent's token, printed by `meridian workspaces create`.
    #[arg(long, env = "MERIDIAN_AGENT_TOKEN", hide_env_values = true)]
    pub agent_token: Secret,
    /// Region to attach to first [default: the coordinator's choice, the primary first].
    #[arg(long, env = "MERIDIAN_REGION")]
    pub region: Option<String>,
    /// Extra PEM CA certificate to trust for HTTPS [default: public roots only].
    #[arg(long, env = "MERIDIAN_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// After failing over, move back to the preferred region once it has been
    /// healthy this long (hysteresis, so a flapping region is not followed).
    #[arg(long, env = "MERIDIAN_FAILBACK_AFTER", default_value = "30s", value_parser = humantime::parse_duration)]
    pub failback_after: Duration,
    /// Close a pipe between an app connection and the relay once no byte has
    /// moved either way for this long (a peer that vanished without closing).
    #[arg(long, env = "MERIDIAN_PIPE_IDLE_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    pub pipe_idle_timeout: Duration,
    /// The agent's SSH host key (OpenSSH format), made on first start and
    /// kept: clients pin it [default: $XDG_STATE_HOME/meridian/agent-<token id>/ssh_host_ed25519_key,
    /// or ~/.local/state/… without XDG_STATE_HOME; with neither, or where
    /// that cannot be written, a key for this run only, with a warning].
    #[arg(long, env = "MERIDIAN_HOST_KEY_FILE")]
    pub host_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub coordinator_url: Url,
    pub agent_token: Secret,
    pub region: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub failback_after: Duration,
    pub pipe_idle_timeout: Duration,
    pub host_key_file: HostKeyFile,
}

/// Where the SSH host key is kept.
#[derive(Debug, Clone)]
pub enum HostKeyFile {
    /// Given with `--host-key-file`: it must be readable or writable.
    Given(PathBuf),
    /// The default place, if there is one: a key for this run only when it cannot be used.
    Default(Option<PathBuf>),
}

impl Args {
    pub fn resolve(self) -> Result<Config, String> {
        let token = Token::parse(self.agent_token.expose()).map_err(|e| format!("--agent-token: {e}"))?;
        let host_key_file = match self.host_key_file {
            Some(path) => HostKeyFile::Given(path),
            None => HostKeyFile::Default(
                default_state_dir().map(|d| d.join(format!("agent-{}", token.id)).join("ssh_host_ed25519_key")),
            ),
        };
        if !matches!(self.coordinator_url.scheme(), "http" | "https") {
            return Err("--coordinator-url must be http or https".into());
        }
        Ok(Config {
            coordinator_url: self.coordinator_url,
            agent_token: self.agent_token,
            region: self.region,
            ca_cert: self.ca_cert,
            failback_after: self.failback_after,
            pipe_idle_timeout: self.pipe_idle_timeout,
            host_key_file,
        })
    }
}

/// `$XDG_STATE_HOME/meridian`, or `~/.local/state/meridian`.
fn default_state_dir() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME").map(PathBuf::from).filter(|p| p.is_absolute());
    let state = state.or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(state.join("meridian"))
}
