//! Which hosts a region serves, and the checks that keep a region's proxy
//! token to them: a registration may not name other hosts, a login ticket is
//! redeemed only by the region serving its host, and an app token's binding
//! must name the very app that was authorized, on the asking region's hosts.
//!
//! Ports are not part of a region's identity here: replicas of one region may
//! listen on different ports, and browsers scope cookies by host, not port.

use super::AppState;
use crate::error::{ApiError, ApiResult};
use crate::primary::PRIMARY_REGION_ID;
use crate::store::RegionRow;
use meridian_regions::api::{IssueAppToken, RegionHosts, RegisterProxy};
use meridian_regions::app_url::{parse_host, parse_path, wildcard_base, HostMatch, PathMatch};

/// The hosts one region serves (lowercase, no port).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Path apps and the region's own pages.
    access_host: Option<String>,
    /// Subdomain apps: one label under this base.
    wildcard_base: Option<String>,
}

impl Served {
    /// What `region` serves: the primary's from the coordinator's own
    /// configuration, any other region's as pinned.
    pub fn of(state: &AppState, region: &RegionRow) -> Self {
        if region.id == PRIMARY_REGION_ID {
            return Self {
                access_host: state.config.access_url.host_str().map(str::to_ascii_lowercase),
                wildcard_base: state.config.wildcard_access_url.as_deref().and_then(wildcard_base),
            };
        }
        Self::from_hosts(&RegionHosts {
            access_url: region.access_url.clone(),
            wildcard_hostname: region.wildcard_hostname.clone(),
        })
    }

    fn from_hosts(hosts: &RegionHosts) -> Self {
        Self {
            access_host: hosts.access_url.as_deref().and_then(url_host),
            wildcard_base: hosts.wildcard_hostname.as_deref().and_then(wildcard_base),
        }
    }

    /// Whether `host` (no port) is this region's: its access host, or one
    /// label under its wildcard base.
    pub fn serves(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.access_host.as_deref() == Some(host.as_str()) {
            return true;
        }
        let Some(base) = &self.wildcard_base else { return false };
        host.strip_suffix(base.as_str())
            .and_then(|h| h.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.'))
    }

    /// Checks that `req.binding` names exactly the app `req.app`, by the URL
    /// form `req` says, on this region's hosts: a region asking for one app
    /// must not get a token that opens another.
    pub fn check_binding(&self, req: &IssueAppToken) -> ApiResult<()> {
        let refused = |why: &str| ApiError::BadRequest(format!("The token binding {why}."));
        if req.subdomain {
            let host = req.binding.strip_prefix("host:").ok_or_else(|| refused("is not a subdomain binding"))?;
            let base =
                self.wildcard_base.as_deref().ok_or_else(|| refused("names a host this region does not serve"))?;
            return match parse_host(host, base) {
                HostMatch::App(app) if app == req.app => Ok(()),
                HostMatch::App(_) => Err(refused("names another app than the one asked for")),
                _ => Err(refused("names a host this region does not serve")),
            };
        }
        let rest = req.binding.strip_prefix("path:").ok_or_else(|| refused("is not a path binding"))?;
        let (host, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if self.access_host.as_deref() != Some(host) {
            return Err(refused("names a host this region does not serve"));
        }
        match parse_path(prefix) {
            PathMatch::App { req: app, prefix: p, .. } if app == req.app && p == prefix => Ok(()),
            _ => Err(refused("names another app than the one asked for")),
        }
    }
}

/// A registration may name only the region's hosts (any port). Hosts not
/// set yet are pinned by this registration; changing them takes an admin.
pub async fn check_registration(state: &AppState, region: &RegionRow, req: &RegisterProxy) -> ApiResult<()> {
    if region.id == PRIMARY_REGION_ID {
        return Ok(()); // the coordinator's own proxy: its hosts are the configuration's
    }
    let wanted = RegionHosts {
        access_url: Some(req.access_url.clone()),
        wildcard_hostname: Some(req.wildcard_hostname.clone()),
    };
    let reserved = state.config.wildcard_access_url.as_deref();
    let pinned = state.store.claim_hosts(region, &wanted, reserved).await?;
    if Served::from_hosts(&pinned) == Served::from_hosts(&wanted) {
        return Ok(());
    }
    let shown = |h: &RegionHosts| {
        format!(
            "access URL {}, wildcard {:?}",
            h.access_url.as_deref().unwrap_or("-"),
            h.wildcard_hostname.as_deref().unwrap_or_default()
        )
    };
    tracing::warn!(region = %region.name, wanted = %shown(&wanted), "refused a registration naming other hosts");
    Err(ApiError::Conflict(format!(
        "Region {:?} serves {}; this proxy registered {}. An admin can change a region's hosts \
         (PATCH /api/v2/regions/{}).",
        region.name,
        shown(&pinned),
        shown(&wanted),
        region.name
    )))
}

/// Checks an admin's hostnames for a region: a URL with a host, a wildcard pattern.
pub fn validate(hosts: &RegionHosts) -> ApiResult<()> {
    if let Some(u) = &hosts.access_url {
        let url = url::Url::parse(u).map_err(|e| ApiError::BadRequest(format!("access_url is not a URL: {e}.")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(ApiError::BadRequest("access_url must be an http or https URL with a host.".into()));
        }
    }
    if let Some(w) = hosts.wildcard_hostname.as_deref().filter(|w| !w.is_empty()) {
        meridian_regions::wildcard::check(w)
            .map_err(|e| ApiError::BadRequest(format!("wildcard_hostname {w:?}: {e}.")))?;
    }
    Ok(())
}

/// The host of a URL, lowercase, without port or trailing dot (the same
/// name to a browser).
fn url_host(u: &str) -> Option<String> {
    url::Url::parse(u).ok()?.host_str().map(|h| h.trim_end_matches('.').to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_regions::app_token::{path_binding, subdomain_binding};
    use meridian_regions::app_url::{AppRequest, AppTarget};

    fn sydney() -> Served {
        Served::from_hosts(&RegionHosts {
            access_url: Some("http://Sydney.example.com:7081".into()),
            wildcard_hostname: Some("*.sydney.example.com:7081".into()),
        })
    }

    fn app(slug: &str) -> AppRequest {
        AppRequest {
            user: "alice".into(),
            workspace: "dev".into(),
            agent: Some("main".into()),
            target: AppTarget::Slug(slug.into()),
        }
    }

    #[test]
    fn hosts_a_region_serves() {
        let s = sydney();
        for ok in ["sydney.example.com", "code--main--dev--alice.sydney.example.com", "X.SYDNEY.example.com"] {
            assert!(s.serves(ok), "{ok}");
        }
        for bad in ["frankfurt.example.com", "a.b.sydney.example.com", ".sydney.example.com", "evilsydney.example.com"]
        {
            assert!(!s.serves(bad), "{bad}");
        }
        assert!(!Served::default().serves("sydney.example.com"), "nothing pinned serves nothing");
    }

    #[test]
    fn bindings_follow_the_app_asked_for() {
        let s = sydney();
        let ask = |app: AppRequest, subdomain: bool, binding: String| IssueAppToken {
            app_session_token: None,
            app,
            subdomain,
            binding,
        };
        let good = [
            ask(app("code"), true, subdomain_binding("code--main--dev--alice.sydney.example.com")),
            ask(app("code"), false, path_binding("sydney.example.com", "/@alice/dev.main/apps/code/")),
        ];
        for req in good {
            assert!(s.check_binding(&req).is_ok(), "{}", req.binding);
        }
        let bad = [
            // The public app asked for, the owner-only app's host as binding.
            ask(app("open"), true, subdomain_binding("code--main--dev--alice.sydney.example.com")),
            // Another region's host.
            ask(app("code"), true, subdomain_binding("code--main--dev--alice.frankfurt.example.com")),
            ask(app("code"), false, path_binding("frankfurt.example.com", "/@alice/dev.main/apps/code/")),
            // Another app's path, or a path binding asked for as a subdomain one.
            ask(app("open"), false, path_binding("sydney.example.com", "/@alice/dev.main/apps/code/")),
            ask(app("code"), true, path_binding("sydney.example.com", "/@alice/dev.main/apps/code/")),
            ask(app("code"), false, path_binding("sydney.example.com", "/@alice/dev.main/apps/code/x/")),
            ask(app("code"), false, "path:sydney.example.com".into()),
        ];
        for req in bad {
            assert!(matches!(s.check_binding(&req), Err(ApiError::BadRequest(_))), "{}", req.binding);
        }
    }
}
