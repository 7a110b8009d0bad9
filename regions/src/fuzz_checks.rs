//! The properties the fuzz targets (`regions/fuzz/`) check on arbitrary input, kept
//! here so `cargo test` replays the same checks over the seed corpus
//! (`regions/tests/fuzz_corpus.rs`). Each function panics when a property
//! breaks; none may panic otherwise.

use crate::app_token::{generate_key, Signer, Verifier};
use crate::headers::{app_cookies, cookie_copies, crumb_name, crumbs};
use crate::redirect::{validate, AppHosts};
use crate::request::{check_framing, normalize_path, parse_authority};
use std::sync::OnceLock;

/// Host grammar: a parsed authority is lower-case ASCII, parses again to
/// itself, and the app-host grammar never panics on it.
pub fn host(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let _ = crate::app_url::parse_host(raw, "sydney.localhost");
    if let Ok(a) = parse_authority(raw) {
        assert!(a.host.is_ascii() && !a.host.is_empty(), "{raw:?} → {a:?}");
        assert_eq!(a.host, a.host.to_ascii_lowercase(), "{raw:?}");
        assert!(!a.host.ends_with('.'), "{raw:?}");
        let again = parse_authority(&a.to_host_port()).expect("a normalized authority parses");
        assert_eq!(again, a, "{raw:?}");
        let _ = crate::app_url::parse_host(&a.to_host_port(), "sydney.localhost");
    }
}

/// Path normalisation: the result is a clean absolute path (no empty, `.` or
/// `..` segments, no encoded separators) and normalizing it changes nothing.
pub fn path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let _ = crate::app_url::parse_path(raw);
    if let Ok(p) = normalize_path(raw) {
        assert!(p.starts_with('/'), "{raw:?} → {p:?}");
        assert!(!p.contains("//"), "{raw:?} → {p:?}");
        let inner = p.trim_start_matches('/').trim_end_matches('/');
        for seg in inner.split('/').filter(|_| !inner.is_empty()) {
            assert!(!matches!(seg, "" | "." | ".."), "{raw:?} → {p:?}");
        }
        let lower = p.to_ascii_lowercase();
        assert!(!lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("%00"), "{raw:?} → {p:?}");
        assert_eq!(normalize_path(&p).as_deref(), Ok(p.as_str()), "not idempotent for {raw:?}");
        let _ = crate::app_url::parse_path(&p);
    }
}

fn keys() -> &'static (Signer, Verifier) {
    static KEYS: OnceLock<(Signer, Verifier)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let (der, public) = generate_key("k1", [7u8; 32]);
        (Signer::new("k1", &der), Verifier::new(&[public]))
    })
}

/// Token decoding: arbitrary input never verifies (nothing here was signed
/// by the key), and never panics, as an app or an attach token.
pub fn token(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let (_, verifier) = keys();
    assert!(verifier.verify(raw, "code--main--dev--alice.sydney.localhost").is_err(), "{raw:?} verified");
    assert!(verifier.attach_claims(raw).is_err(), "{raw:?} verified as an attach token");
    let _ = verifier.verify_with_grace(raw, "x", 3600);
}

fn hosts() -> &'static AppHosts {
    static HOSTS: OnceLock<AppHosts> = OnceLock::new();
    HOSTS.get_or_init(|| AppHosts {
        wildcards: vec!["*.apps.example.com".into(), "*.sydney.localhost:7081".into()],
        access_urls: vec![url::Url::parse("https://meridian.example.com").unwrap_or_else(|_| unreachable!())],
    })
}

/// Login-flow redirects: whatever is accepted is an http(s) URL without
/// userinfo whose host is an app host under a configured wildcard, or the
/// access URL's host with a path app.
pub fn redirect(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    if let Ok(url) = validate(raw, hosts()) {
        assert!(matches!(url.scheme(), "http" | "https"), "{raw:?}");
        assert!(url.username().is_empty() && url.password().is_none(), "{raw:?}");
        let host = url.host_str().unwrap_or_default();
        let under_wildcard = host.ends_with(".apps.example.com") || host.ends_with(".sydney.localhost");
        assert!(under_wildcard || host == "meridian.example.com", "{raw:?} → {host}");
        assert!(!raw.contains(['\\', '\r', '\n', '\t']), "{raw:?}");
    }
}

/// Request framing: never panics; a head that passes has one framing (only
/// the head counts: what follows its blank line is body, which the check
/// never reads).
pub fn framing(data: &[u8]) {
    if check_framing(data).is_ok() {
        let head = data.windows(4).position(|w| w == b"\r\n\r\n").map_or(data, |end| &data[..end + 2]);
        let text = String::from_utf8_lossy(head).to_ascii_lowercase();
        let cl = text.matches("\ncontent-length:").count();
        let te = text.matches("\ntransfer-encoding:").count();
        assert!(cl + te <= 1, "{text:?} passed with {cl} Content-Length and {te} Transfer-Encoding");
    }
}

/// Cookie fields, split as bytes whatever they hold: every crumb is trimmed,
/// non-empty and holds no `;`; what the app is given (`app_cookies`) is a
/// valid field holding exactly the crumbs that are not Meridian's, in which
/// no Meridian cookie is found again; a copy found in the field is the value
/// of a crumb of that name.
pub fn cookie(data: &[u8]) {
    let Ok(field) = http::HeaderValue::from_bytes(data) else { return };
    let all: Vec<&[u8]> = crumbs(&field).collect();
    for c in &all {
        assert!(!c.is_empty() && !c.contains(&b';') && c.trim_ascii() == *c, "{data:?} → {c:?}");
    }
    let app = http::HeaderValue::from_bytes(&app_cookies(std::iter::once(&field))).expect("the app's field is valid");
    let meridian = |c: &&[u8]| crate::headers::is_meridian_cookie(crumb_name(c));
    let kept: Vec<&[u8]> = all.iter().copied().filter(|c| !meridian(c)).collect();
    assert_eq!(crumbs(&app).collect::<Vec<_>>(), kept, "{data:?}");
    let (mut sent, mut forwarded) = (http::HeaderMap::new(), http::HeaderMap::new());
    sent.append(http::header::COOKIE, field.clone());
    forwarded.append(http::header::COOKIE, app);
    for name in ["meridian_session", "meridian_app_session", "meridian_app_token", "__Host-meridian_app_token"] {
        assert_eq!(cookie_copies(&forwarded, name).count(), 0, "{data:?}: {name} reaches the app");
        for value in cookie_copies(&sent, name) {
            let of = |c: &&[u8]| crumb_name(c) == name.as_bytes() && c.ends_with(value.as_bytes());
            assert!(all.iter().any(of), "{data:?}: {name}={value} is no crumb's");
        }
    }
    // As a `Set-Cookie` field: one the proxy lets through sets nothing the
    // browser sends back as a Meridian cookie (a nameless cookie is sent as
    // its value alone).
    if !crate::headers::sets_meridian_cookie(data) {
        let pair = data.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
        let sent = match pair.iter().position(|&b| b == b'=') {
            Some(eq) if crumb_name(pair).is_empty() => pair[eq + 1..].trim_ascii(),
            _ => pair,
        };
        let Ok(sent) = http::HeaderValue::from_bytes(sent) else { return };
        let mut back = http::HeaderMap::new();
        back.append(http::header::COOKIE, sent);
        for name in ["meridian_session", "meridian_app_session", "meridian_app_token", "__Host-meridian_session"] {
            assert_eq!(cookie_copies(&back, name).count(), 0, "{data:?} sets {name}");
        }
    }
}
