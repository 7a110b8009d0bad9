//! Name resolution for Meridian's own clients (agents, proxies, the CLI):
//! hickory's stub resolver with the system configuration, except that
//! `localhost` and every name under `.localhost` are loopback without a query
//! (RFC 6761 §6.3), as browsers and curl treat them, so the demo's
//! `*.sydney.localhost` URLs work everywhere with no DNS set-up.

use hickory_resolver::TokioResolver;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

/// Whether `host` is `localhost` or under `.localhost` (any case, trailing dot allowed).
pub fn is_localhost(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host.len() > 10
            && host.is_char_boundary(host.len() - 10)
            && host[host.len() - 10..].eq_ignore_ascii_case(".localhost")
}

/// The addresses of `host`: an IP literal as is, `.localhost` as loopback,
/// anything else through hickory.
pub async fn lookup(host: &str) -> std::io::Result<Vec<IpAddr>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    if is_localhost(host) {
        return Ok(vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]);
    }
    let resolver = system()?;
    let found =
        resolver.lookup_ip(host).await.map_err(|e| std::io::Error::other(format!("cannot resolve {host}: {e}")))?;
    Ok(found.iter().collect())
}

/// Connects to the first address of `host` that accepts.
pub async fn connect(host: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for ip in lookup(host).await? {
        match tokio::net::TcpStream::connect(SocketAddr::new(ip, port)).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{host} has no addresses"))))
}

/// One resolver per process, built on first use from `/etc/resolv.conf`.
fn system() -> std::io::Result<&'static TokioResolver> {
    static RESOLVER: OnceLock<Result<TokioResolver, String>> = OnceLock::new();
    RESOLVER
        .get_or_init(|| {
            TokioResolver::builder_tokio().and_then(|b| b.build()).map_err(|e| format!("no DNS configuration: {e}"))
        })
        .as_ref()
        .map_err(|e| std::io::Error::other(e.clone()))
}

/// [`lookup`] as reqwest's resolver.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resolver;

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let ips = lookup(&host).await?;
            let addrs: reqwest::dns::Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The resolver for a reqwest client builder.
pub fn for_reqwest() -> Arc<Resolver> {
    Arc::new(Resolver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_names() {
        for yes in ["localhost", "LOCALHOST.", "a.sydney.localhost", "x.Localhost."] {
            assert!(is_localhost(yes), "{yes}");
        }
        for no in ["localhost.example.com", "notlocalhost", "localhostx", "", ".localhos", "é.localhosté"] {
            assert!(!is_localhost(no), "{no}");
        }
    }

    #[tokio::test]
    async fn localhost_is_loopback_without_dns() {
        let ips = lookup("code--main--dev--alice.sydney.localhost").await.unwrap();
        assert!(ips.iter().all(|ip| ip.is_loopback()) && !ips.is_empty());
        assert_eq!(lookup("[::1]").await.unwrap(), vec![IpAddr::from(Ipv6Addr::LOCALHOST)]);
    }
}
