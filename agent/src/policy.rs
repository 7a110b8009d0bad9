//! Which targets the agent opens streams to: its loopback only, on a
//! declared app's port or any port from 1024 up.

use meridian_regions::api::App;
use meridian_regions::app_url::MIN_APP_PORT;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone)]
pub struct Policy {
    declared_ports: HashSet<u16>,
}

impl Policy {
    pub fn new(apps: &[App]) -> Self {
        let declared_ports = apps
            .iter()
            .filter_map(|a| {
                a.port.or_else(|| a.url.as_deref().and_then(|u| url::Url::parse(u).ok()?.port_or_known_default()))
            })
            .collect();
        Self { declared_ports }
    }

    /// The loopback address to connect to for `target` (`host:port`), if allowed.
    pub fn check(&self, target: &str) -> Result<SocketAddr, &'static str> {
        let (host, port) = target.rsplit_once(':').ok_or("target must be host:port")?;
        let port: u16 = port.parse().map_err(|_| "bad port")?;
        let ip: IpAddr = match host.trim_start_matches('[').trim_end_matches(']') {
            "localhost" => IpAddr::from([127, 0, 0, 1]),
            h => h.parse().map_err(|_| "target host must be a loopback address")?,
        };
        if !ip.is_loopback() {
            return Err("target host must be a loopback address");
        }
        if port < MIN_APP_PORT && !self.declared_ports.contains(&port) {
            return Err("ports below 1024 are reachable only when an app declares them");
        }
        Ok(SocketAddr::new(ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_regions::api::Share;

    #[test]
    fn targets() {
        let app = |port, url: Option<&str>| App {
            slug: "a".into(),
            port,
            url: url.map(Into::into),
            subdomain: true,
            share: Share::Owner,
            cors: Default::default(),
        };
        let p = Policy::new(&[app(Some(80), None), app(None, Some("http://127.0.0.1:443"))]);
        for ok in ["127.0.0.1:8080", "localhost:3000", "[::1]:8080", "127.0.0.1:80", "127.0.0.1:443"] {
            assert!(p.check(ok).is_ok(), "{ok}");
        }
        for bad in [
            "127.0.0.1:22",
            "10.0.0.1:8080",
            "example.com:8080",
            "169.254.169.254:80",
            "127.0.0.1",
            "127.0.0.1:x",
            "[::2]:8080",
        ] {
            assert!(p.check(bad).is_err(), "{bad}");
        }
    }
}
