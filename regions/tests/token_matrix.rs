//! The token matrix (`tests/fixtures/tokens.yaml`) against the verifier, with
//! real Ed25519 signatures.

use meridian_regions::app_token::{
    generate_key, path_binding, subdomain_binding, tamper, AppClaims, Signer, TokenError, Verifier, ISSUER,
};
use serde::Deserialize;
use std::collections::HashMap;
use uuid::Uuid;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    claims: HashMap<String, serde_yaml::Value>,
    tamper: Option<String>,
    key: Option<String>,
    expect: String,
    #[serde(default)]
    #[allow(dead_code)]
    proxy: bool,
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn binding(value: &str) -> String {
    match value.split_once('/') {
        Some((host, path)) => path_binding(host, &format!("/{path}")),
        None => subdomain_binding(value),
    }
}

fn outcome(result: &Result<AppClaims, TokenError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(TokenError::BadSignature) => "bad_signature",
        Err(TokenError::Expired) => "expired",
        Err(TokenError::NotYetValid) => "not_yet_valid",
        Err(TokenError::WrongApp) => "wrong_app",
        Err(TokenError::UnknownKey(_)) => "unknown_key",
        Err(_) => "malformed",
    }
}

#[test]
fn the_token_matrix() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tokens.yaml");
    let cases: Vec<Case> = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let (der, public) = generate_key("k1", [7u8; 32]);
    let signer = Signer::new("k1", &der);
    let verifier = Verifier::new(std::slice::from_ref(&public));
    let host = "code--main--dev--alice.sydney.localhost";
    let mut failures = Vec::new();
    for case in &cases {
        let n = now();
        let mut claims = AppClaims {
            iss: ISSUER.into(),
            sub: Uuid::new_v4().to_string(),
            binding: subdomain_binding(host),
            agent_id: Uuid::new_v4(),
            upstream: "http://127.0.0.1:8080".into(),
            share: meridian_regions::api::Share::Owner,
            sandbox: false,
            cors_passthru: false,
            dial: Default::default(),
            iat: n,
            nbf: n,
            exp: n + 300,
            sid: Some(Uuid::new_v4()),
        };
        for (field, value) in &case.claims {
            let int = || n + value.as_i64().expect("relative seconds");
            let text = || value.as_str().expect("a string").to_owned();
            match field.as_str() {
                "exp" => claims.exp = int(),
                "nbf" => claims.nbf = int(),
                "iat" => claims.iat = int(),
                "iss" => claims.iss = text(),
                "sub" => claims.sub = text(),
                "binding" => claims.binding = binding(&text()),
                other => panic!("{}: unknown claim {other}", case.name),
            }
        }
        let token = match case.key.as_deref() {
            None => signer.sign(&claims).unwrap(),
            Some("stranger") => Signer::new("k2", &generate_key("k2", [9u8; 32]).0).sign(&claims).unwrap(),
            Some("impostor") => Signer::new("k1", &generate_key("k1", [9u8; 32]).0).sign(&claims).unwrap(),
            Some(other) => panic!("{}: unknown key {other}", case.name),
        };
        let token = match case.tamper.as_deref() {
            None => token,
            Some(how) => tamper(&token, how, &public).unwrap_or_else(|| panic!("{}: cannot tamper {how}", case.name)),
        };
        let got = outcome(&verifier.verify(&token, &subdomain_binding(host)));
        let pass = match case.expect.as_str() {
            "refused" => got != "ok",
            want => got == want,
        };
        if !pass {
            failures.push(format!("{}: {got}, want {}", case.name, case.expect));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
