//! Where the login flow may send a browser: `redirect_uri` of auth-redirect
//! must be exactly an app address Meridian serves — a subdomain app host under
//! a registered wildcard (same port), or a path app under a registered access
//! URL. Never a prefix match, never userinfo, never a scheme other than http(s).

use crate::app_token::{path_binding, subdomain_binding};
use crate::app_url::{parse_host, parse_path, wildcard_base, HostMatch, PathMatch};
use url::Url;

/// Longest `redirect_uri` accepted.
const MAX_LEN: usize = 4096;

/// The app addresses served by the primary and every region.
#[derive(Debug, Default, Clone)]
pub struct AppHosts {
    /// Wildcard patterns, e.g. `*.sydney.localhost:7081`.
    pub wildcards: Vec<String>,
    /// Access URLs, for path apps.
    pub access_urls: Vec<Url>,
}

/// Checks `raw`; on success returns the parsed URL.
pub fn validate(raw: &str, hosts: &AppHosts) -> Result<Url, &'static str> {
    validate_app(raw, hosts).map(|(url, _)| url)
}

/// Checks `raw`; on success returns the parsed URL and the binding of the
/// one app it addresses (what a token for it is bound to: see
/// [`crate::app_token::subdomain_binding`] and [`crate::app_token::path_binding`]).
pub fn validate_app(raw: &str, hosts: &AppHosts) -> Result<(Url, String), &'static str> {
    if raw.len() > MAX_LEN {
        return Err("redirect_uri is too long");
    }
    if raw.chars().any(|c| c.is_control() || c == '\\' || c.is_whitespace()) {
        return Err("redirect_uri holds control characters, spaces or backslashes");
    }
    let url = Url::parse(raw).map_err(|_| "redirect_uri must be an absolute URL")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("redirect_uri must be http or https");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("redirect_uri may not hold userinfo");
    }
    let host = url.host_str().ok_or("redirect_uri has no host")?;
    let port = url.port_or_known_default();
    let subdomain_app = hosts.wildcards.iter().any(|w| {
        let Some(base) = wildcard_base(w) else {
            return false;
        };
        let want_port = w.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
        let port_ok = match want_port {
            Some(p) => port == Some(p),
            None => url.port().is_none(),
        };
        port_ok && matches!(parse_host(host, &base), HostMatch::App(_))
    });
    if subdomain_app {
        let binding = subdomain_binding(host);
        return Ok((url, binding));
    }
    let at_access_url = hosts
        .access_urls
        .iter()
        .any(|a| a.scheme() == url.scheme() && a.host_str() == Some(host) && a.port_or_known_default() == port);
    match parse_path(url.path()) {
        PathMatch::App { prefix, .. } if at_access_url => {
            let binding = path_binding(host, &prefix);
            Ok((url, binding))
        }
        _ => Err("redirect_uri is not an app address served by Meridian"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_app_addresses() {
        let hosts = AppHosts {
            wildcards: vec!["*.sydney.localhost:7081".into(), "*.apps.example.com".into()],
            access_urls: vec![Url::parse("http://127.0.0.1:7080").unwrap()],
        };
        let ok = [
            "http://code--main--dev--alice.sydney.localhost:7081/",
            "http://code--main--dev--alice.sydney.localhost:7081/x?y=1",
            "https://8080--main--dev--alice.apps.example.com/",
            "http://127.0.0.1:7080/@alice/dev/apps/code/",
        ];
        for u in ok {
            assert!(validate(u, &hosts).is_ok(), "{u}: {:?}", validate(u, &hosts));
        }
        let bindings = [
            ("http://CODE--main--dev--alice.sydney.localhost:7081/x", "host:code--main--dev--alice.sydney.localhost"),
            ("http://127.0.0.1:7080/@alice/dev/apps/code/x/y?z", "path:127.0.0.1/@alice/dev/apps/code/"),
        ];
        for (u, want) in bindings {
            assert_eq!(validate_app(u, &hosts).unwrap().1, want, "{u}");
        }
        let bad = [
            "//evil.example",
            "/relative/path",
            "https://evil.example",
            "http://evil.example:7081/",
            "http://sydney.localhost:7081/",
            "http://code--main--dev--alice.sydney.localhos:7081/",
            "http://code--main--dev--alice.sydney.localhost.evil.example:7081/",
            "http://code--main--dev--alice.sydney.localhost:7082/",
            "http://code--main--dev--alice.sydney.localhost/",
            "https://code--main--dev--alice.apps.example.com:8443/",
            "http://evil@code--main--dev--alice.sydney.localhost:7081/",
            "http://code--main--dev--alice.sydney.localhost:7081@evil.example/",
            "http://code--main--dev--alice.sydney.localhost:7081\\@evil.example/",
            "javascript:alert(1)",
            "data:text/html,hi",
            "http://code--main--dev--alice.sydney.localhost:7081/\r\nSet-Cookie: x=y",
            "http://127.0.0.1:7080/api/v2/users/me",
            "https://127.0.0.1:7080/@alice/dev/apps/code/",
            "http://a.code--main--dev--alice.sydney.localhost:7081/",
            "",
        ];
        for u in bad {
            assert!(validate(u, &hosts).is_err(), "{u:?} must be refused");
        }
        assert!(validate(&format!("http://127.0.0.1:7080/@a/w/apps/x/{}", "a".repeat(5000)), &hosts).is_err());
    }
}
