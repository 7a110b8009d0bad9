//! The signed app token: a JWS (EdDSA, Ed25519) minted by the coordinator and
//! verified by proxies with public keys received at registration, so a region
//! can verify tokens but never mint them.
//!
//! A token is bound to one exact app address (its `binding`): the subdomain
//! app's host, or the path app's access host plus base path. A token for one
//! app is worthless on any other.

use crate::model::Share;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use uuid::Uuid;

/// Issuer claim of every app token.
pub const ISSUER: &str = "meridian";
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// What an app token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppClaims {
    pub iss: String,
    /// The user's id, or `anonymous` for a public app opened signed out.
    pub sub: String,
    /// The exact app address this token is good for (see [`subdomain_binding`], [`path_binding`]).
    pub binding: String,
    /// The agent serving the app.
    pub agent_id: Uuid,
    /// The app's address inside the workspace, e.g. `http://127.0.0.1:8080`.
    pub upstream: String,
    pub share: Share,
    /// Serve the app's answers inside a CSP sandbox: a path app opened by
    /// someone other than its owner shares an origin with that person's other
    /// apps (or the dashboard), so its scripts must not act as them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
    /// The app's owner opted it into passing its own CORS headers through
    /// (see [`crate::model::Cors::Passthru`]); the owner's username is in the binding's app address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cors_passthru: bool,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// The sign-in session it was minted from (for an app token, the session
    /// the app session was signed in under): revoking that session voids it
    /// in every region. `None` for a public app opened signed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
    /// [`AppClaims::dial`], once asked.
    #[serde(skip)]
    pub dial: DialCache,
}

/// A parsed [`Dial`] kept with the claims: derived from `upstream`, so it is
/// no part of the claims' identity (always equal, printed as nothing).
#[derive(Clone, Default)]
pub struct DialCache(std::sync::OnceLock<Option<Dial>>);

impl PartialEq for DialCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for DialCache {}

impl std::fmt::Debug for DialCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("..")
    }
}

impl AppClaims {
    /// How to reach [`AppClaims::upstream`]; `None` when it is not a URL with
    /// a host and port. Parsed on first use and kept with the claims (which
    /// the proxy caches with the verified token).
    pub fn dial(&self) -> Option<&Dial> {
        self.dial.0.get_or_init(|| Dial::parse(&self.upstream)).as_ref()
    }
}

/// The `host:port` a relay opens inside the workspace for an app's
/// `upstream` (`http://127.0.0.1:8080` → `127.0.0.1:8080`, IPv6 bracketed).
/// The proxy dials it and the relay holding the tunnel checks it against the
/// token, so both must derive it the same way: here.
pub fn stream_target(upstream: &str) -> Option<String> {
    Dial::parse(upstream).map(|d| d.target.to_string())
}

/// How the proxy reaches an app's `upstream`, parsed once per verified token
/// ([`AppClaims::dial`]) instead of on every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    /// The host as in the URL (no brackets), for TLS's server name.
    pub host: String,
    /// The address that keys the proxy's connection pool (loopback when the
    /// host is a name: the connector dials through the relay, not to it).
    pub addr: std::net::SocketAddr,
    pub tls: bool,
    /// See [`stream_target`]. Shared: each request's connector holds it.
    pub target: std::sync::Arc<str>,
}

impl Dial {
    pub fn parse(upstream: &str) -> Option<Self> {
        let url = url::Url::parse(upstream).ok()?;
        let port = url.port_or_known_default()?;
        let target = match url.host()? {
            url::Host::Ipv6(ip) => format!("[{ip}]:{port}"),
            host => format!("{host}:{port}"),
        };
        let host = url.host_str()?.trim_start_matches('[').trim_end_matches(']').to_owned();
        let ip = host.parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
        let target = target.into();
        Some(Dial { addr: std::net::SocketAddr::new(ip, port), host, tls: url.scheme() == "https", target })
    }
}

/// Audience of attach tokens: relays, and nothing else.
pub const ATTACH_AUDIENCE: &str = "meridian-relay";

/// What an attach token says: agent `agent_id` may attach to a relay of
/// region `region` until `exp`. Agents get one per region with their
/// connection info and present it (never their agent token, which lives as
/// long as the workspace) to that region's relays, which check it with the
/// app-token keys, so they admit agents while the coordinator is unreachable
/// too. Its `aud` keeps it from ever passing as an app token, and the
/// reverse; its `region` from opening any other region's relay (a region
/// that received one cannot replay it elsewhere).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachClaims {
    pub iss: String,
    pub aud: String,
    pub agent_id: Uuid,
    /// The region whose relays it opens; tokens of earlier releases name
    /// none and open no relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub iat: i64,
    pub exp: i64,
}

/// A public key as handed to proxies: key id and the raw Ed25519 key, base64url.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub kid: String,
    pub x: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token names an unknown key {0:?}")]
    UnknownKey(String),
    #[error("token signature or algorithm is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token is for another app")]
    WrongApp,
}

/// The binding of a subdomain app: its host, lowercase, without port.
pub fn subdomain_binding(host: &str) -> String {
    format!("host:{}", host.to_ascii_lowercase())
}

/// The binding of a path app: the access host (lowercase, without port) and the app's base path.
pub fn path_binding(access_host: &str, prefix: &str) -> String {
    format!("path:{}{prefix}", access_host.to_ascii_lowercase())
}

/// Mints tokens with one private key (the coordinator's).
pub struct Signer {
    kid: String,
    key: EncodingKey,
}

impl Signer {
    /// `pkcs8_der` is the Ed25519 private key in PKCS#8 DER form.
    pub fn new(kid: &str, pkcs8_der: &[u8]) -> Self {
        Self { kid: kid.to_owned(), key: EncodingKey::from_ed_der(pkcs8_der) }
    }

    pub fn sign(&self, claims: &AppClaims) -> Result<String, TokenError> {
        self.sign_any(claims)
    }

    pub fn sign_attach(&self, claims: &AttachClaims) -> Result<String, TokenError> {
        self.sign_any(claims)
    }

    fn sign_any(&self, claims: &impl Serialize) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|_| TokenError::Malformed)
    }
}

/// Verifies tokens against a set of public keys (a proxy's).
#[derive(Clone, Default)]
pub struct Verifier {
    keys: HashMap<String, DecodingKey>,
}

impl Verifier {
    pub fn new(keys: &[PublicKey]) -> Self {
        let keys = keys
            .iter()
            .filter_map(|k| {
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&k.x).ok()?;
                (raw.len() == 32).then(|| (k.kid.clone(), DecodingKey::from_ed_der(&raw)))
            })
            .collect();
        Self { keys }
    }

    pub fn knows(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// The key id a token names, if it has a readable header.
    pub fn key_id(token: &str) -> Option<String> {
        jsonwebtoken::decode_header(token).ok()?.kid
    }

    /// Checks signature, algorithm (EdDSA only: `none` and HMAC are refused),
    /// issuer, time (with [`LEEWAY_SECS`]) and that the token is bound to `binding`.
    pub fn verify(&self, token: &str, binding: &str) -> Result<AppClaims, TokenError> {
        self.verify_with_grace(token, binding, 0)
    }

    /// Checks a token presented for one relay stream: a valid signature and
    /// time (expired at most `grace_secs` ago), for agent `agent` and an app
    /// whose upstream is exactly `target`. The binding is not checked: the
    /// relay holding the tunnel does not know which host the user came by,
    /// only that some user was authorized for this app.
    pub fn verify_stream(
        &self,
        token: &str,
        agent: Uuid,
        target: &str,
        grace_secs: u64,
    ) -> Result<AppClaims, TokenError> {
        let claims = self.verify_unbound(token, grace_secs)?;
        if claims.agent_id != agent || stream_target(&claims.upstream).as_deref() != Some(target) {
            return Err(TokenError::WrongApp);
        }
        Ok(claims)
    }

    /// The agent an attach token admits to region `region`'s relays: it is
    /// signed by a known key, meant for relays, current, and for that region.
    pub fn verify_attach_for(&self, token: &str, region: &str) -> Result<Uuid, TokenError> {
        let claims = self.attach_claims(token)?;
        if claims.region.as_deref() != Some(region) {
            return Err(TokenError::WrongApp);
        }
        Ok(claims.agent_id)
    }

    /// The claims of an attach token signed by a known key, meant for
    /// relays and current (whatever region it names).
    pub fn attach_claims(&self, token: &str) -> Result<AttachClaims, TokenError> {
        let kid = Self::key_id(token).ok_or(TokenError::Malformed)?;
        let key = self.keys.get(&kid).ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECS;
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[ATTACH_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        match jsonwebtoken::decode::<AttachClaims>(token, key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => Err(TokenError::Expired),
            Err(_) => Err(TokenError::BadSignature),
        }
    }

    /// [`Verifier::verify`], but a token that expired up to `grace_secs` ago
    /// still passes (for a proxy that cannot reach the coordinator to renew
    /// it). Not-yet-valid tokens get no grace.
    pub fn verify_with_grace(&self, token: &str, binding: &str, grace_secs: u64) -> Result<AppClaims, TokenError> {
        let claims = self.verify_unbound(token, grace_secs)?;
        if claims.binding != binding {
            return Err(TokenError::WrongApp);
        }
        Ok(claims)
    }

    /// Signature, algorithm, issuer and time; the caller checks what the token is for.
    fn verify_unbound(&self, token: &str, grace_secs: u64) -> Result<AppClaims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let kid = Self::key_id(token).ok_or(TokenError::Malformed)?;
        let key = self.keys.get(&kid).ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECS.saturating_add(grace_secs);
        // nbf is checked below, with the plain leeway.
        validation.validate_nbf = false;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss"]);
        let data = jsonwebtoken::decode::<AppClaims>(token, key, &validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                TokenError::BadSignature
            }
            _ => TokenError::Malformed,
        })?;
        let now = jsonwebtoken::get_current_timestamp() as i64;
        if data.claims.nbf > now.saturating_add(LEEWAY_SECS as i64) {
            return Err(TokenError::NotYetValid);
        }
        Ok(data.claims)
    }
}

/// A new Ed25519 key pair: (PKCS#8 DER private key, public key for proxies).
pub fn generate_key(kid: &str, seed: [u8; 32]) -> (Vec<u8>, PublicKey) {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let der = signing.to_pkcs8_der().map(|d| d.as_bytes().to_vec()).unwrap_or_default();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
    (der, PublicKey { kid: kid.to_owned(), x })
}

/// Edits of a signed token for the token matrix (`tests/fixtures/tokens.yaml`):
/// `header`, `payload`, `signature`, `alg_none`, `kid_unknown`, and
/// `alg_hs256`: the same claims in a real HS256 token whose HMAC key is
/// `public`'s raw bytes (algorithm confusion: what a verifier trusting the
/// header's `alg` would check it with).
#[doc(hidden)]
pub fn tamper(token: &str, how: &str, public: &PublicKey) -> Option<String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let edit_json = |part: usize, edit: &dyn Fn(&mut serde_json::Value)| -> Option<String> {
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut json: serde_json::Value = serde_json::from_slice(&B64.decode(parts.get(part)?).ok()?).ok()?;
        edit(&mut json);
        parts[part] = B64.encode(serde_json::to_vec(&json).ok()?);
        Some(parts.join("."))
    };
    match how {
        "header" => edit_json(0, &|h| h["typ"] = "JOSE".into()),
        "payload" => edit_json(1, &|p| p["sub"] = Uuid::new_v4().to_string().into()),
        "signature" => {
            let (rest, sig) = token.rsplit_once('.')?;
            let mut sig = B64.decode(sig).ok()?;
            *sig.first_mut()? ^= 1;
            Some(format!("{rest}.{}", B64.encode(sig)))
        }
        "alg_none" => Some(format!("{}.", edit_json(0, &|h| h["alg"] = "none".into())?.rsplit_once('.')?.0)),
        "alg_hs256" => {
            let mut parts = token.split('.');
            let mut header: serde_json::Value = serde_json::from_slice(&B64.decode(parts.next()?).ok()?).ok()?;
            header["alg"] = "HS256".into();
            let signed = format!("{}.{}", B64.encode(serde_json::to_vec(&header).ok()?), parts.next()?);
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &B64.decode(&public.x).ok()?);
            Some(format!("{signed}.{}", B64.encode(ring::hmac::sign(&key, signed.as_bytes()))))
        }
        "kid_unknown" => edit_json(0, &|h| h["kid"] = "k-unknown".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    fn claims(now: i64) -> AppClaims {
        AppClaims {
            iss: ISSUER.into(),
            sub: Uuid::nil().to_string(),
            binding: subdomain_binding("code--main--dev--alice.sydney.localhost"),
            agent_id: Uuid::nil(),
            upstream: "http://127.0.0.1:8080".into(),
            share: Share::Owner,
            sandbox: false,
            cors_passthru: false,
            dial: Default::default(),
            iat: now,
            nbf: now,
            exp: now + 300,
            sid: Some(Uuid::new_v4()),
        }
    }

    fn now() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
    }

    fn setup() -> (Signer, Verifier) {
        let (der, public) = generate_key("k1", [7u8; 32]);
        (Signer::new("k1", &der), Verifier::new(&[public]))
    }

    #[test]
    fn round_trip_and_binding() {
        let (signer, verifier) = setup();
        let c = claims(now());
        let token = signer.sign(&c).unwrap();
        assert_eq!(verifier.verify(&token, &c.binding).unwrap(), c);
        let other = subdomain_binding("code--main--dev--bob.sydney.localhost");
        assert_eq!(verifier.verify(&token, &other), Err(TokenError::WrongApp));
        assert_eq!(subdomain_binding("A.B"), subdomain_binding("a.b"));
        assert_ne!(path_binding("h", "/@a/w/apps/x/"), subdomain_binding("h/@a/w/apps/x/"));
    }

    #[test]
    fn stream_grants_name_one_agent_and_one_upstream() {
        let (signer, verifier) = setup();
        let c = claims(now());
        let token = signer.sign(&c).unwrap();
        assert_eq!(verifier.verify_stream(&token, c.agent_id, "127.0.0.1:8080", 0).unwrap(), c);
        let cases = [
            (Uuid::new_v4(), "127.0.0.1:8080"), // another agent
            (c.agent_id, "127.0.0.1:8081"),     // another port of the same agent
            (c.agent_id, "localhost:8080"),     // another spelling of the host
        ];
        for (agent, target) in cases {
            assert_eq!(verifier.verify_stream(&token, agent, target, 0), Err(TokenError::WrongApp), "{target}");
        }
        let tampered = tamper(&token, "payload", &generate_key("k1", [7u8; 32]).1).unwrap();
        assert_eq!(verifier.verify_stream(&tampered, c.agent_id, "127.0.0.1:8080", 0), Err(TokenError::BadSignature));
        let expired = signer.sign(&AppClaims { exp: now() - 600, nbf: now() - 900, ..c.clone() }).unwrap();
        assert_eq!(verifier.verify_stream(&expired, c.agent_id, "127.0.0.1:8080", 0), Err(TokenError::Expired));
        assert!(verifier.verify_stream(&expired, c.agent_id, "127.0.0.1:8080", 3600).is_ok(), "offline grace");
    }

    #[test]
    fn stream_targets() {
        let cases = [
            ("http://127.0.0.1:8080", Some("127.0.0.1:8080")),
            ("https://127.0.0.1", Some("127.0.0.1:443")),
            ("http://[::1]:9000/x", Some("[::1]:9000")),
            ("http://localhost:3000", Some("localhost:3000")),
            ("not a url", None),
        ];
        for (upstream, want) in cases {
            assert_eq!(stream_target(upstream).as_deref(), want, "{upstream}");
        }
    }

    #[test]
    fn claims_parse_their_upstream_once_into_where_to_dial() {
        let mut c = claims(now());
        c.upstream = "https://[::1]:9443/app".into();
        let dial = c.dial().unwrap();
        assert_eq!(dial.host, "::1");
        assert_eq!(dial.addr, "[::1]:9443".parse().unwrap());
        assert!(dial.tls);
        assert_eq!(&*dial.target, "[::1]:9443");
        // A name keys the pool as loopback (the relay dials it inside the workspace).
        let named = AppClaims { upstream: "http://localhost:3000".into(), dial: DialCache::default(), ..c.clone() };
        let dial = named.dial().unwrap();
        assert_eq!((dial.host.as_str(), dial.addr, dial.tls), ("localhost", "127.0.0.1:3000".parse().unwrap(), false));
        assert!(AppClaims { upstream: "not a url".into(), dial: DialCache::default(), ..c.clone() }.dial().is_none());
        // Derived, so not part of the claims' identity.
        assert_eq!(named, AppClaims { dial: DialCache::default(), ..named.clone() });
    }

    #[test]
    fn attach_tokens_admit_their_agent_only_and_never_pass_as_app_tokens() {
        let (signer, verifier) = setup();
        let n = now();
        let agent_id = Uuid::new_v4();
        let attach = |aud: &str, exp: i64| AttachClaims {
            iss: ISSUER.into(),
            aud: aud.into(),
            agent_id,
            region: Some("sydney".into()),
            iat: n,
            exp,
        };
        let verify = |t: &str| verifier.verify_attach_for(t, "sydney");
        let good = signer.sign_attach(&attach(ATTACH_AUDIENCE, n + 600)).unwrap();
        assert_eq!(verify(&good), Ok(agent_id));
        assert_eq!(verifier.verify_attach_for(&good, "frankfurt"), Err(TokenError::WrongApp), "another region's relay");
        let unbound = signer.sign_attach(&AttachClaims { region: None, ..attach(ATTACH_AUDIENCE, n + 600) }).unwrap();
        assert_eq!(verify(&unbound), Err(TokenError::WrongApp), "a token naming no region opens no relay");
        assert!(verifier.verify(&good, "host:x").is_err(), "an attach token is no app token");
        let app = signer.sign(&claims(n)).unwrap();
        assert!(verify(&app).is_err(), "an app token is no attach token");
        assert!(verify(&signer.sign_attach(&attach("other", n + 600)).unwrap()).is_err());
        let expired = signer.sign_attach(&attach(ATTACH_AUDIENCE, n - 120)).unwrap();
        assert_eq!(verify(&expired), Err(TokenError::Expired));
        let (other_der, _) = generate_key("k1", [9u8; 32]);
        let forged = Signer::new("k1", &other_der).sign_attach(&attach(ATTACH_AUDIENCE, n + 600)).unwrap();
        assert_eq!(verify(&forged), Err(TokenError::BadSignature));
    }

    #[test]
    fn refusals() {
        let (signer, verifier) = setup();
        let n = now();
        let good = claims(n);
        let b = good.binding.clone();
        let token = signer.sign(&good).unwrap();
        let parts: Vec<&str> = token.split('.').collect();

        let expired = signer.sign(&AppClaims { exp: n - 120, nbf: n - 600, ..good.clone() }).unwrap();
        assert_eq!(verifier.verify(&expired, &b), Err(TokenError::Expired));
        let within_skew = signer.sign(&AppClaims { exp: n - 5, ..good.clone() }).unwrap();
        assert!(verifier.verify(&within_skew, &b).is_ok(), "skew tolerated");
        assert!(verifier.verify_with_grace(&expired, &b, 3600).is_ok(), "offline grace covers a recent expiry");
        assert_eq!(verifier.verify_with_grace(&expired, &b, 60), Err(TokenError::Expired), "grace is bounded");
        let future = signer.sign(&AppClaims { nbf: n + 600, exp: n + 900, ..good.clone() }).unwrap();
        assert_eq!(verifier.verify(&future, &b), Err(TokenError::NotYetValid));

        // Tampered payload: same signature, another user.
        let mut evil = good.clone();
        evil.sub = Uuid::new_v4().to_string();
        let evil_payload = B64.encode(serde_json::to_vec(&evil).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], evil_payload, parts[2]);
        assert_eq!(verifier.verify(&tampered, &b), Err(TokenError::BadSignature));
        // Tampered signature.
        let mut sig = B64.decode(parts[2]).unwrap();
        sig[0] ^= 1;
        let bad_sig = format!("{}.{}.{}", parts[0], parts[1], B64.encode(sig));
        assert_eq!(verifier.verify(&bad_sig, &b), Err(TokenError::BadSignature));
        // alg: none, unsigned.
        let header = B64.encode(r#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
        let unsigned = format!("{header}.{}.", parts[1]);
        assert_eq!(verifier.verify(&unsigned, &b), Err(TokenError::Malformed), "alg none is no algorithm at all");
        // Algorithm confusion: real HS256 tokens whose HMAC key is the public
        // key as a verifier that trusted the header would hold it (its raw
        // bytes, and the base64 text proxies receive).
        let (_, key) = generate_key("k1", [7u8; 32]);
        let public = B64.decode(&key.x).unwrap();
        for (what, secret) in [("raw public key", public), ("base64 public key", key.x.clone().into_bytes())] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("k1".into());
            let forged = jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(&secret).unwrap()).unwrap();
            // A real forgery: a verifier that took the header's word would accept it.
            let mut naive = Validation::new(Algorithm::HS256);
            naive.set_required_spec_claims(&["exp"]);
            assert!(
                jsonwebtoken::decode::<AppClaims>(&forged, &DecodingKey::from_secret(&secret).unwrap(), &naive).is_ok()
            );
            assert_eq!(verifier.verify(&forged, &b), Err(TokenError::BadSignature), "HS256 with the {what}");
            assert_eq!(verifier.verify_with_grace(&forged, &b, 3600), Err(TokenError::BadSignature), "{what}");
        }
        // The token matrix's forgery (`tamper`) is as real.
        let forged = tamper(&token, "alg_hs256", &key).unwrap();
        let raw = DecodingKey::from_secret(&B64.decode(&key.x).unwrap()).unwrap();
        let mut naive = Validation::new(Algorithm::HS256);
        naive.set_required_spec_claims(&["exp"]);
        assert!(jsonwebtoken::decode::<AppClaims>(&forged, &raw, &naive).is_ok(), "tamper makes a valid HS256 token");
        assert_eq!(verifier.verify(&forged, &b), Err(TokenError::BadSignature));
        // Unknown key id, and a key we never trusted.
        let (der2, _) = generate_key("k2", [9u8; 32]);
        let stranger = Signer::new("k2", &der2).sign(&good).unwrap();
        assert_eq!(verifier.verify(&stranger, &b), Err(TokenError::UnknownKey("k2".into())));
        let (der3, _) = generate_key("k1", [9u8; 32]);
        let impostor = Signer::new("k1", &der3).sign(&good).unwrap();
        assert_eq!(verifier.verify(&impostor, &b), Err(TokenError::BadSignature));
        for junk in ["", "a.b", "a.b.c", "....", &"x".repeat(5000)] {
            assert!(verifier.verify(junk, &b).is_err(), "{junk:?}");
        }
    }
}
