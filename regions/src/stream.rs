//! Shell and TCP streams through a region: what a stream opens in a
//! workspace, the path a client asks a region for it on, and how the token
//! that authorizes it names it.
//!
//! - Path (on any region's access host, HTTP/1.1 upgrade `meridian-stream`,
//!   or a WebSocket for the web terminal): `/@{user}/{workspace}.{agent}/ssh`,
//!   `/@{user}/{workspace}.{agent}/terminal`, `/@{user}/{workspace}.{agent}/tcp/{port}`.
//! - Token: an app token (see [`crate::app_token`]) whose binding is
//!   [`StreamRequest::binding`] and whose upstream is [`StreamKind::upstream`],
//!   a reserved `*.meridian` name no app can have (apps are on the
//!   workspace's loopback), so an app token never opens a stream and a stream
//!   token never opens an app, at the region or at a relay.
//! - The agent tells stream targets from app targets by that name
//!   ([`StreamKind::from_target`]).

use crate::name::Name;

/// The upgrade protocol of a stream (`Upgrade: meridian-stream`).
pub const UPGRADE_PROTOCOL: &str = "meridian-stream";
/// Header carrying the stream token from the client to the region.
pub const TOKEN_HEADER: &str = "Meridian-Stream-Token";

/// What a stream opens in the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// The agent's SSH server (it listens on no port: streams are its only way in).
    Ssh,
    /// A reconnecting PTY for the web terminal.
    Terminal,
    /// A TCP port on the workspace's loopback.
    Tcp(u16),
}

/// The reserved host names of stream targets (never an app's: those are loopback addresses).
const SSH_HOST: &str = "ssh.meridian";
const TERMINAL_HOST: &str = "terminal.meridian";
const TCP_HOST: &str = "tcp.meridian";

impl StreamKind {
    /// `ssh`, `terminal` or `tcp:{port}` (what the CLI and the token request say).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "ssh" => Ok(Self::Ssh),
            "terminal" => Ok(Self::Terminal),
            _ => {
                let port = s
                    .strip_prefix("tcp:")
                    .ok_or_else(|| format!("unknown stream {s:?}: expected ssh, terminal or tcp:PORT"))?;
                match port.parse::<u16>() {
                    Ok(p) if p > 0 => Ok(Self::Tcp(p)),
                    _ => Err(format!("invalid port {port:?}: expected 1 to 65535")),
                }
            }
        }
    }

    /// The app-token upstream that names this stream; its [`crate::app_token::stream_target`]
    /// is what a relay opens and what the agent receives.
    pub fn upstream(self) -> String {
        format!("stream://{}", self.target())
    }

    /// The relay target: `ssh.meridian:22`, `terminal.meridian:1`, `tcp.meridian:{port}`.
    pub fn target(self) -> String {
        match self {
            Self::Ssh => format!("{SSH_HOST}:22"),
            Self::Terminal => format!("{TERMINAL_HOST}:1"),
            Self::Tcp(port) => format!("{TCP_HOST}:{port}"),
        }
    }

    /// The stream a relay target names, if it is one (else an app's `host:port`).
    pub fn from_target(target: &str) -> Option<Self> {
        let (host, port) = target.rsplit_once(':')?;
        match (host, port) {
            (SSH_HOST, "22") => Some(Self::Ssh),
            (TERMINAL_HOST, "1") => Some(Self::Terminal),
            (TCP_HOST, p) => p.parse().ok().filter(|p| *p > 0).map(Self::Tcp),
            _ => None,
        }
    }

    /// The path segment(s) after the workspace: `ssh`, `terminal`, `tcp/{port}`.
    fn path(self) -> String {
        match self {
            Self::Ssh => "ssh".into(),
            Self::Terminal => "terminal".into(),
            Self::Tcp(port) => format!("tcp/{port}"),
        }
    }
}

impl std::fmt::Display for StreamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ssh => f.write_str("ssh"),
            Self::Terminal => f.write_str("terminal"),
            Self::Tcp(port) => write!(f, "tcp:{port}"),
        }
    }
}

/// A stream asked of a region: whose workspace, which agent, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    pub user: String,
    pub workspace: String,
    pub agent: String,
    pub kind: StreamKind,
}

impl StreamRequest {
    /// The path a client asks a region for this stream on.
    pub fn path(&self) -> String {
        format!("/@{}/{}.{}/{}", self.user, self.workspace, self.agent, self.kind.path())
    }

    /// What a token for this stream is bound to: not a host, so one token
    /// opens the stream at whichever region the client picks (it moves to
    /// another when its region dies); any relay could already open the same
    /// target with it through the mesh, so a host adds no limit.
    pub fn binding(&self) -> String {
        format!("stream:{}", self.path())
    }
}

/// Why a stream path is refused (each a 400 but for [`StreamPathError::AtMe`], a 404).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamPathError {
    #[error("invalid stream path: {0}")]
    Bad(&'static str),
    #[error("`@me` cannot be used in stream paths; use the username")]
    AtMe,
}

impl StreamPathError {
    pub fn status(&self) -> u16 {
        match self {
            Self::AtMe => 404,
            Self::Bad(_) => 400,
        }
    }
}

/// Matches `/@{user}/{workspace}.{agent}/{ssh|terminal|tcp/PORT}`: `None`
/// when the path is not a stream's (it may be a path app's).
pub fn parse_path(path: &str) -> Option<Result<StreamRequest, StreamPathError>> {
    let rest = path.strip_prefix("/@")?;
    let mut segs = rest.split('/');
    let (user, ws_agent, what) = (segs.next()?, segs.next()?, segs.next()?);
    let kind = match (what, segs.next(), segs.next()) {
        ("ssh", None, _) => StreamKind::Ssh,
        ("terminal", None, _) => StreamKind::Terminal,
        ("tcp", Some(port), None) => match port.parse::<u16>() {
            Ok(p) if p > 0 && !port.starts_with('0') => StreamKind::Tcp(p),
            _ => return Some(Err(StreamPathError::Bad("the port must be from 1 to 65535"))),
        },
        _ => return None,
    };
    if user == "me" {
        return Some(Err(StreamPathError::AtMe));
    }
    let Some((workspace, agent)) = ws_agent.split_once('.') else {
        return Some(Err(StreamPathError::Bad("expected /@{user}/{workspace}.{agent}/…: the agent must be named")));
    };
    if [user, workspace, agent].iter().any(|n| Name::parse(n).is_err()) {
        return Some(Err(StreamPathError::Bad("user, workspace and agent must be names")));
    }
    Some(Ok(StreamRequest { user: user.into(), workspace: workspace.into(), agent: agent.into(), kind }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: StreamKind) -> StreamRequest {
        StreamRequest { user: "alice".into(), workspace: "dev".into(), agent: "main".into(), kind }
    }

    #[test]
    fn paths() {
        let cases: Vec<(&str, Option<Result<StreamRequest, StreamPathError>>)> = vec![
            ("/@alice/dev.main/ssh", Some(Ok(req(StreamKind::Ssh)))),
            ("/@alice/dev.main/terminal", Some(Ok(req(StreamKind::Terminal)))),
            ("/@alice/dev.main/tcp/5432", Some(Ok(req(StreamKind::Tcp(5432))))),
            ("/@alice/dev.main/tcp/22", Some(Ok(req(StreamKind::Tcp(22))))),
            ("/@alice/dev.main/tcp/0", Some(Err(StreamPathError::Bad("the port must be from 1 to 65535")))),
            ("/@alice/dev.main/tcp/65536", Some(Err(StreamPathError::Bad("the port must be from 1 to 65535")))),
            ("/@alice/dev.main/tcp/080", Some(Err(StreamPathError::Bad("the port must be from 1 to 65535")))),
            ("/@alice/dev.main/tcp/x", Some(Err(StreamPathError::Bad("the port must be from 1 to 65535")))),
            ("/@me/dev.main/ssh", Some(Err(StreamPathError::AtMe))),
            (
                "/@alice/dev/ssh",
                Some(Err(StreamPathError::Bad("expected /@{user}/{workspace}.{agent}/…: the agent must be named"))),
            ),
            ("/@alice/d_v.main/ssh", Some(Err(StreamPathError::Bad("user, workspace and agent must be names")))),
            // Not a stream: path apps, other paths, a stream path with more after it.
            ("/@alice/dev.main/apps/ssh/", None),
            ("/@alice/dev.main/ssh/x", None),
            ("/@alice/dev.main/tcp/5432/x", None),
            ("/@alice/dev.main/tcp", None),
            ("/healthz", None),
        ];
        for (path, want) in cases {
            assert_eq!(parse_path(path), want, "{path}");
        }
    }

    #[test]
    fn kinds_round_trip_through_paths_targets_and_upstreams() {
        for kind in [StreamKind::Ssh, StreamKind::Terminal, StreamKind::Tcp(5432), StreamKind::Tcp(1)] {
            let r = req(kind);
            assert_eq!(parse_path(&r.path()), Some(Ok(r.clone())));
            assert_eq!(StreamKind::from_target(&kind.target()), Some(kind));
            assert_eq!(crate::app_token::stream_target(&kind.upstream()), Some(kind.target()));
            assert_eq!(StreamKind::parse(&kind.to_string()), Ok(kind));
        }
        // App targets are never streams, and the reserved names take only their own ports.
        for app in ["127.0.0.1:8080", "localhost:22", "ssh.meridian:2222", "terminal.meridian:2", "tcp.meridian:0"] {
            assert_eq!(StreamKind::from_target(app), None, "{app}");
        }
        assert!(StreamKind::parse("tcp:0").is_err() && StreamKind::parse("udp:53").is_err());
        assert_eq!(req(StreamKind::Ssh).binding(), "stream:/@alice/dev.main/ssh");
    }
}
