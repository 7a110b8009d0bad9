//! Listening on port 0, and saying where: a process binds its listeners
//! first, then settles what names their ports (a `0` in its access URLs
//! stands for the port it bound), and once it serves writes what it bound to
//! `--ready-file`, so whoever started it (a test, the demo, a supervisor)
//! reads the address instead of guessing a free port.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use url::Url;

/// What a process writes to its `--ready-file` once it serves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ready {
    /// Its process id.
    pub pid: u32,
    /// The address of its main listener (apps and the API).
    pub listen: SocketAddr,
    /// Where users reach it, with the bound port settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_url: Option<String>,
    /// The relay's listener (agents and peer relays), for a proxy or coordinator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<SocketAddr>,
    /// The coordinator's `--internal-listen`, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal: Option<SocketAddr>,
}

impl Ready {
    /// What a server reports: this process, its main listener, where users
    /// reach it, and its relay's listener.
    pub fn serving(listen: SocketAddr, access_url: &Url, relay: SocketAddr) -> Self {
        Self {
            pid: std::process::id(),
            listen,
            access_url: Some(access_url.to_string()),
            relay: Some(relay),
            internal: None,
        }
    }

    /// `args` (a process's command line) with `--listen` and `--relay-listen`
    /// set to the addresses it bound, so a restart binds the same ones.
    pub fn pin(&self, args: &mut [String]) {
        for (flag, addr) in [("--listen", Some(self.listen)), ("--relay-listen", self.relay)] {
            if let (Some(at), Some(addr)) = (args.iter().position(|a| a == flag), addr) {
                if let Some(value) = args.get_mut(at + 1) {
                    *value = addr.to_string();
                }
            }
        }
    }

    /// Writes it to `path` if there is one (a `--ready-file`); the error names the file.
    pub fn report(&self, path: Option<&Path>) -> Result<(), String> {
        match path {
            Some(path) => write(path, self).map_err(|e| format!("cannot write {}: {e}", path.display())),
            None => Ok(()),
        }
    }
}

/// `url` with a port of 0 replaced by `port` (the one its process bound).
pub fn settle_url(url: &mut Url, port: u16) {
    if url.port() == Some(0) {
        let _ = url.set_port(Some(port));
    }
}

/// A wildcard access URL (`*.sydney.localhost:0`) with a port of 0 replaced by `port`.
pub fn settle_wildcard(pattern: &mut String, port: u16) {
    if let Some(base) = pattern.strip_suffix(":0") {
        *pattern = format!("{base}:{port}");
    }
}

/// [`crate::wildcard::check`] for a flag, where a port of 0 is allowed (settled later).
pub fn check_wildcard(pattern: &str) -> Result<(), &'static str> {
    crate::wildcard::check(pattern.strip_suffix(":0").unwrap_or(pattern))
}

/// Binds a TCP listener on `addr` (port 0 picks one) with a backlog fit for a
/// proxy, non-blocking, for a server to adopt.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Writes `what` as JSON to `path` whole: to a temporary file beside it, then
/// renamed over it, so a reader never sees half of it.
pub fn write(path: &Path, what: &impl Serialize) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let json = serde_json::to_vec_pretty(what).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

/// What a process wrote to its ready file `path`, once it has.
pub fn read(path: &Path) -> Option<Ready> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_port_stands_for_the_bound_one() {
        let mut url = Url::parse("http://127.0.0.1:0/").unwrap();
        settle_url(&mut url, 4242);
        assert_eq!(url.as_str(), "http://127.0.0.1:4242/");
        let mut fixed = Url::parse("http://127.0.0.1:8080/").unwrap();
        settle_url(&mut fixed, 4242);
        assert_eq!(fixed.port(), Some(8080));
        let mut w = "*.sydney.localhost:0".to_owned();
        settle_wildcard(&mut w, 4242);
        assert_eq!(w, "*.sydney.localhost:4242");
        let mut other = "*.sydney.localhost:7000".to_owned();
        settle_wildcard(&mut other, 4242);
        assert_eq!(other, "*.sydney.localhost:7000");
    }

    #[test]
    fn a_restart_is_pinned_to_the_bound_addresses() {
        let ready = Ready {
            pid: 1,
            listen: "127.0.0.1:4242".parse().unwrap(),
            access_url: None,
            relay: Some("127.0.0.1:4343".parse().unwrap()),
            internal: None,
        };
        let mut args: Vec<String> =
            ["proxy", "--listen", "127.0.0.1:0", "--relay-listen", "127.0.0.1:0", "--access-url", "http://x:0"]
                .map(String::from)
                .to_vec();
        ready.pin(&mut args);
        assert_eq!(args[2], "127.0.0.1:4242");
        assert_eq!(args[4], "127.0.0.1:4343");
        assert_eq!(args[6], "http://x:0", "only the listeners");
        let mut no_relay_flag = vec!["sample-app".to_owned(), "--listen".into()];
        ready.pin(&mut no_relay_flag); // a flag without its value is left alone
        assert_eq!(no_relay_flag.len(), 2);
    }

    #[test]
    fn the_ready_file_is_written_whole_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.json");
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listen = listener.local_addr().unwrap();
        assert_ne!(listen.port(), 0);
        let ready = Ready { pid: 7, listen, access_url: None, relay: None, internal: None };
        write(&path, &ready).unwrap();
        assert_eq!(read(&path), Some(ready));
        assert!(!dir.path().join("ready.json.tmp").exists());
    }
}
