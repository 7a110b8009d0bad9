//! What the last request on a connection resolved, kept for the next one on
//! the same connection: keep-alive requests to one app repeat their Host and
//! their token byte for byte, and working them out again (the authority, the
//! app named in the host, the binding its token must carry, the token
//! cache's lookup) cost about 20 allocations and a microsecond of every small
//! request (BENCHMARKS.md, "The data path, fourth pass").
//!
//! Only pure results are kept, each under the exact input it came from: the
//! authority parsed from a raw Host, the subdomain route parsed from that
//! host, the claims a token verified to, the client's address as a field
//! value. Every check that depends on more
//! than its input still runs per request (SNI, the token's binding, expiry
//! and revocation, the path). One entry of each per connection, in a
//! task-local set around the connection's task ([`scope`], by
//! `gate::Capped`); where there is none (an HTTP/2 stream runs in a task of
//! its own) every request works everything out, as before.

use crate::routing::AppRoute;
use http::HeaderValue;
use meridian_regions::app_token::AppClaims;
use std::cell::RefCell;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

/// A Host resolved: what `gate::check` routes on and checks SNI against.
#[derive(Debug)]
pub struct Host {
    /// `host[:port]`, lower case, without a trailing dot.
    pub host_port: Arc<str>,
    /// The host alone (what a TLS client's SNI must name).
    pub name: Box<str>,
}

#[derive(Default)]
struct Last {
    /// The raw authority (Host field or absolute target) and what it parsed to.
    host: Option<(Box<str>, Arc<Host>)>,
    /// `host[:port]` and the subdomain app it names under the wildcard base.
    route: Option<(Arc<str>, Arc<AppRoute>)>,
    /// A token and the claims it verified to (signature and form: what the
    /// shared token cache holds).
    token: Option<(Arc<str>, Arc<AppClaims>)>,
    /// The client's address and its text as a field value (`X-Forwarded-For`).
    client_ip: Option<(IpAddr, HeaderValue)>,
}

tokio::task_local! {
    static LAST: RefCell<Last>;
}

/// Runs a connection's task (`fut`) with a memo of its own.
pub async fn scope<F: Future>(fut: F) -> F::Output {
    LAST.scope(RefCell::new(Last::default()), fut).await
}

/// The last request's resolved Host if `raw` is its raw authority, else
/// `parse(raw)`'s, remembered when it parses.
pub fn host<E>(raw: &str, parse: impl FnOnce(&str) -> Result<Host, E>) -> Result<Arc<Host>, E> {
    let hit =
        LAST.try_with(|last| last.borrow().host.as_ref().filter(|(r, _)| r.as_ref() == raw).map(|(_, h)| h.clone()));
    if let Ok(Some(host)) = hit {
        return Ok(host);
    }
    let host = Arc::new(parse(raw)?);
    let _ = LAST.try_with(|last| last.borrow_mut().host = Some((raw.into(), host.clone())));
    Ok(host)
}

/// The subdomain route the last request's `host_port` parsed to, if it is
/// the same host.
pub fn route(host_port: &str) -> Option<Arc<AppRoute>> {
    LAST.try_with(|last| last.borrow().route.as_ref().filter(|(h, _)| h.as_ref() == host_port).map(|(_, r)| r.clone()))
        .ok()
        .flatten()
}

/// Remembers the subdomain route `host_port` parsed to.
pub fn remember_route(host_port: Arc<str>, route: Arc<AppRoute>) {
    let _ = LAST.try_with(|last| last.borrow_mut().route = Some((host_port, route)));
}

/// The claims and shared token the last request's token verified to, if
/// `token` is that token (compared in constant time: a credential; a
/// connection may carry more than one user's requests behind a shared
/// forward proxy). Word by word: `subtle`'s byte-at-a-time comparison of a
/// ~600-byte token was 0.9 µs of every request (BENCHMARKS.md, sixth pass).
pub fn token(token: &str) -> Option<(Arc<AppClaims>, Arc<str>)> {
    let same = |t: &Arc<str>| constant_time_eq::constant_time_eq(t.as_bytes(), token.as_bytes());
    LAST.try_with(|last| last.borrow().token.as_ref().filter(|(t, _)| same(t)).map(|(t, c)| (c.clone(), t.clone())))
        .ok()
        .flatten()
}

/// `ip` as a field value (what `X-Forwarded-For` carries): the connection's
/// address is the same for each of its requests, so it is written out once
/// (formatting it and its two allocations were per request).
pub fn client_ip(ip: IpAddr) -> Option<HeaderValue> {
    let hit = LAST.try_with(|last| last.borrow().client_ip.as_ref().filter(|(i, _)| *i == ip).map(|(_, v)| v.clone()));
    if let Ok(Some(value)) = hit {
        return Some(value);
    }
    // An address's text (digits, dots, colons, hex) is always a valid value.
    let value = HeaderValue::try_from(ip.to_string()).ok()?;
    let _ = LAST.try_with(|last| last.borrow_mut().client_ip = Some((ip, value.clone())));
    Some(value)
}

/// Remembers what `token` verified to.
pub fn remember_token(token: Arc<str>, claims: Arc<AppClaims>) {
    let _ = LAST.try_with(|last| last.borrow_mut().token = Some((token, claims)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> Result<Host, ()> {
        Ok(Host { host_port: raw.to_ascii_lowercase().into(), name: raw.into() })
    }

    #[tokio::test]
    async fn a_repeated_host_is_parsed_once_per_connection_and_another_host_again() {
        let parses = std::cell::Cell::new(0);
        let count = |raw: &str| {
            parses.set(parses.get() + 1);
            parsed(raw)
        };
        scope(async {
            let first = host("A.example:80", count).unwrap();
            let again = host("A.example:80", count).unwrap();
            assert!(Arc::ptr_eq(&first, &again), "the same raw Host gives what it parsed to");
            assert_eq!(parses.get(), 1);
            let other = host("b.example", count).unwrap();
            assert_eq!(&*other.host_port, "b.example");
            assert_eq!(parses.get(), 2, "another Host is parsed");
            // A Host that differs only in case is another input: parsed anew.
            host("a.example:80", count).unwrap();
            assert_eq!(parses.get(), 3);
        })
        .await;
        // Another connection starts with nothing remembered.
        scope(async { host("A.example:80", count).unwrap() }).await;
        assert_eq!(parses.get(), 4);
    }

    #[tokio::test]
    async fn outside_a_connection_nothing_is_remembered() {
        let parses = std::cell::Cell::new(0);
        for _ in 0..2 {
            host("a.example", |raw| {
                parses.set(parses.get() + 1);
                parsed(raw)
            })
            .unwrap();
        }
        assert_eq!(parses.get(), 2);
        assert!(token("t").is_none());
    }

    #[tokio::test]
    async fn only_the_same_token_finds_what_the_last_one_verified_to() {
        let claims = Arc::new(AppClaims {
            iss: "meridian".into(),
            sub: "someone".into(),
            binding: "host:app.example".into(),
            agent_id: uuid::Uuid::nil(),
            upstream: "http://127.0.0.1:8080".into(),
            share: Default::default(),
            sandbox: false,
            cors_passthru: false,
            iat: 0,
            nbf: 0,
            exp: 1,
            sid: None,
            dial: Default::default(),
        });
        let token = "header.claims-of-one-user.signature";
        scope(async {
            remember_token(token.into(), claims.clone());
            let (found, shared) = super::token(token).expect("the same token");
            assert!(Arc::ptr_eq(&found, &claims));
            assert_eq!(&*shared, token);
            // Another user's token behind the same connection (a shared
            // forward proxy), the same length and differing in one byte, or
            // longer: each is checked on its own.
            assert!(super::token("header.claims-of-one-user.signaturE").is_none());
            assert!(super::token("header.claims-of-one-user.signature2").is_none());
            assert!(super::token("").is_none());
        })
        .await;
    }

    #[tokio::test]
    async fn a_client_address_is_written_for_that_address_only() {
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "2001:db8::7".parse().unwrap());
        scope(async {
            assert_eq!(client_ip(a).unwrap(), "10.0.0.1");
            assert_eq!(client_ip(a).unwrap(), "10.0.0.1");
            // Behind a relay or a NAT the address may change between requests.
            assert_eq!(client_ip(b).unwrap(), "2001:db8::7");
            assert_eq!(client_ip(a).unwrap(), "10.0.0.1");
        })
        .await;
        assert_eq!(client_ip(b).unwrap(), "2001:db8::7", "outside a connection too");
    }

    #[tokio::test]
    async fn a_refused_host_is_not_remembered() {
        scope(async {
            assert!(host("bad", |_| Err::<Host, _>("refused")).is_err());
            let ok = host("bad", parsed).unwrap();
            assert_eq!(&*ok.host_port, "bad");
        })
        .await;
    }
}
