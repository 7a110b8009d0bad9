//! OpenID Connect sign-in (the `openidconnect` crate does discovery, JWKS,
//! PKCE and every check of the ID token: signature, issuer, audience,
//! expiry, nonce).
//!
//! The authorization code flow: [`Oidc::start`] discovers the provider
//! afresh (a provider that is down is a 503 naming it, before the browser is
//! sent anywhere; keys it rotated are picked up here) and returns where to
//! send the browser with what the callback needs, which the API stores once
//! (`oidc_flows`). [`Oidc::finish`] exchanges the code with the PKCE verifier
//! and checks the ID token with the provider's keys as discovered at the
//! start (fetched again once if the token names a key that is not among them),
//! then reads who the user is and the groups they are in.

use crate::config::OidcConfig;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreRevocableToken,
    CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, IdTokenFields, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    Scope, StandardErrorResponse, StandardTokenResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};
use std::sync::RwLock;
use std::time::Duration;

/// Longest wait for the provider (discovery, keys, the code exchange).
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// The claims of an ID token beyond the standard ones (groups, a custom username claim).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Extra(serde_json::Map<String, serde_json::Value>);

impl AdditionalClaims for Extra {}

type Fields = IdTokenFields<
    Extra,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type Tokens = StandardTokenResponse<Fields, CoreTokenType>;
type Client = openidconnect::Client<
    Extra,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Why a sign-in through the provider failed.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The provider could not be reached or answered nonsense (503).
    #[error("{0}")]
    Unavailable(String),
    /// What came back does not prove who the user is (401).
    #[error("{0}")]
    Rejected(String),
}

/// Who the provider says signed in.
#[derive(Debug, Clone)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    /// The username claim's value, as the provider gave it.
    pub username: Option<String>,
    pub email: Option<String>,
    pub email_verified: Option<bool>,
    pub groups: Vec<String>,
    /// The provider's refresh token, when it gave one (`offline_access`).
    pub refresh: Option<String>,
}

/// Why a refresh token was not renewed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The provider refused it: the user's sign-in there is over.
    #[error("{0}")]
    Refused(String),
    /// The provider could not be asked; try again later.
    #[error("{0}")]
    Unavailable(String),
}

/// What the callback needs of the flow [`Oidc::start`] began.
pub struct Flow {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

pub struct Oidc {
    pub config: OidcConfig,
    redirect: RedirectUrl,
    http: reqwest::Client,
    /// The provider as last discovered.
    metadata: RwLock<Option<CoreProviderMetadata>>,
}

impl Oidc {
    pub fn new(config: OidcConfig, access_url: &url::Url) -> anyhow::Result<Self> {
        let redirect =
            RedirectUrl::new(format!("{}/api/v2/users/oidc/callback", access_url.as_str().trim_end_matches('/')))?;
        // Following redirects would let a provider's answer steer the coordinator's requests.
        let http =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(PROVIDER_TIMEOUT).build()?;
        Ok(Self { config, redirect, http, metadata: RwLock::new(None) })
    }

    /// The redirect URI to register with the provider.
    pub fn redirect_uri(&self) -> &str {
        self.redirect.as_str()
    }

    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> OidcError {
        OidcError::Unavailable(format!(
            "The identity provider ({}, {}) could not be reached to {what}: {e}",
            self.config.provider_name, self.config.issuer
        ))
    }

    /// Discovers the provider (its metadata and keys) and keeps what it found.
    async fn discover(&self) -> Result<CoreProviderMetadata, OidcError> {
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .map_err(|e| OidcError::Unavailable(format!("--oidc-issuer-url is not a URL: {e}")))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| self.unavailable("sign you in", error_chain(&e)))?;
        *self.metadata.write().unwrap_or_else(|e| e.into_inner()) = Some(metadata.clone());
        Ok(metadata)
    }

    fn client(&self, metadata: CoreProviderMetadata) -> Client {
        let secret = self.config.client_secret.as_ref().map(|s| ClientSecret::new(s.expose().to_owned()));
        Client::from_provider_metadata(metadata, ClientId::new(self.config.client_id.clone()), secret)
            .set_redirect_uri(self.redirect.clone())
    }

    /// Begins a sign-in: where to send the browser, and the flow to keep for the callback.
    pub async fn start(&self) -> Result<(url::Url, Flow), OidcError> {
        let client = self.client(self.discover().await?);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request =
            client.authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random);
        for scope in &self.config.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        // A refresh token for offline use is granted only with consent asked for (OIDC Core §11).
        if self.config.scopes.iter().any(|s| s == "offline_access") {
            request = request.add_prompt(openidconnect::core::CoreAuthPrompt::Consent);
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        let flow =
            Flow { state: state.secret().clone(), nonce: nonce.secret().clone(), verifier: verifier.secret().clone() };
        Ok((url, flow))
    }

    /// Completes a sign-in: the code exchanged (with the flow's verifier) for
    /// an ID token, checked, and who it names.
    pub async fn finish(&self, code: String, nonce: String, verifier: String) -> Result<Identity, OidcError> {
        let cached = self.metadata.read().unwrap_or_else(|e| e.into_inner()).clone();
        let metadata = match cached {
            Some(m) => m,
            None => self.discover().await?,
        };
        let client = self.client(metadata);
        let tokens = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| OidcError::Unavailable(format!("The identity provider has no token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| match &e {
                openidconnect::RequestTokenError::ServerResponse(r) => OidcError::Rejected(format!(
                    "The identity provider refused the sign-in code: {}",
                    r.error_description().map_or_else(|| r.error().to_string(), |d| format!("{} ({d})", r.error()))
                )),
                _ => self.unavailable("complete the sign-in", error_chain(&e)),
            })?;
        let id_token =
            tokens.id_token().ok_or_else(|| OidcError::Rejected("The identity provider sent no ID token.".into()))?;
        let nonce = Nonce::new(nonce);
        let claims = match id_token.claims(&client.id_token_verifier(), &nonce) {
            Ok(c) => c.clone(),
            // A key the provider rotated in since the start: fetch the keys once more.
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            )) => {
                let client = self.client(self.discover().await?);
                let verifier = client.id_token_verifier();
                let claims = id_token.claims(&verifier, &nonce).map_err(rejected)?.clone();
                claims
            }
            Err(e) => return Err(rejected(e)),
        };
        let extra = &claims.additional_claims().0;
        let username = match self.config.username_claim.as_deref() {
            None | Some("preferred_username") => claims.preferred_username().map(|u| u.as_str().to_owned()),
            Some("email") => claims.email().map(|e| e.as_str().to_owned()),
            Some("sub") => Some(claims.subject().as_str().to_owned()),
            Some(other) => extra.get(other).and_then(|v| v.as_str()).map(str::to_owned),
        };
        let groups = match extra.get(&self.config.groups_claim) {
            Some(serde_json::Value::Array(list)) => list.iter().filter_map(|g| g.as_str().map(str::to_owned)).collect(),
            Some(serde_json::Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        Ok(Identity {
            refresh: openidconnect::OAuth2TokenResponse::refresh_token(&tokens).map(|r| r.secret().clone()),
            issuer: claims.issuer().as_str().to_owned(),
            subject: claims.subject().as_str().to_owned(),
            username,
            email: claims.email().map(|e| e.as_str().to_owned()),
            email_verified: claims.email_verified(),
            groups,
        })
    }
}

impl Oidc {
    /// Uses `refresh` with the provider: its successor (if it rotated it), or
    /// why not. Only a refusal by the provider says the user's sign-in there
    /// is over; the provider being unreachable says nothing of them.
    pub async fn refresh(&self, refresh: String) -> Result<Option<String>, RefreshError> {
        let cached = self.metadata.read().unwrap_or_else(|e| e.into_inner()).clone();
        let metadata = match cached {
            Some(m) => m,
            None => self.discover().await.map_err(|e| RefreshError::Unavailable(e.to_string()))?,
        };
        let client = self.client(metadata);
        let refresh = openidconnect::RefreshToken::new(refresh);
        let request = client
            .exchange_refresh_token(&refresh)
            .map_err(|e| RefreshError::Unavailable(format!("the provider has no token endpoint: {e}")))?;
        match request.request_async(&self.http).await {
            Ok(tokens) => Ok(openidconnect::OAuth2TokenResponse::refresh_token(&tokens).map(|r| r.secret().clone())),
            Err(openidconnect::RequestTokenError::ServerResponse(r)) => Err(RefreshError::Refused(
                r.error_description().map_or_else(|| r.error().to_string(), |d| format!("{} ({d})", r.error())),
            )),
            Err(e) => Err(RefreshError::Unavailable(error_chain(&e))),
        }
    }
}

/// An ID token that failed a check, named for a person.
fn rejected(e: openidconnect::ClaimsVerificationError) -> OidcError {
    use openidconnect::ClaimsVerificationError as E;
    let why = match &e {
        E::Expired(_) => "it has expired (is the provider's clock right?)".to_owned(),
        E::InvalidAudience(_) => "it was issued to another application (wrong audience)".to_owned(),
        E::InvalidIssuer(_) => "it was issued by another provider (wrong issuer)".to_owned(),
        E::InvalidNonce(_) => "it belongs to another sign-in (nonce mismatch)".to_owned(),
        E::SignatureVerification(s) => format!("its signature does not verify ({s})"),
        other => other.to_string(),
    };
    OidcError::Rejected(format!("The identity provider's ID token was refused: {why}."))
}

/// An error and its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The Meridian username for a provider's name for someone: lowercased, with
/// what a username may not hold replaced by `-`.
pub fn username_from(claim: &str) -> String {
    let lowered = claim.trim().to_lowercase();
    let mut name = String::with_capacity(lowered.len());
    for c in lowered.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }) {
        if !(c == '-' && name.ends_with('-')) {
            name.push(c);
        }
    }
    name.trim_matches('-').to_owned()
}

/// Uses each linked user's refresh token with the provider once per
/// `--oidc-refresh-interval` (every coordinator replica takes its share;
/// each token is claimed by one), suspending a user whose token the provider
/// refuses: their sessions end and every region cuts what they have open.
pub async fn watch(
    oidc: std::sync::Arc<Oidc>,
    store: crate::store::Store,
    secrets: std::sync::Arc<crate::keys::SecretsKey>,
    stop: tokio_util::sync::CancellationToken,
) {
    let every = oidc.config.refresh_interval;
    // Look for due tokens a few times per interval.
    let tick = (every / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
    loop {
        loop {
            let (user, sealed) = match store.claim_due_refresh(every).await {
                Ok(Some(due)) => due,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot look for refresh tokens to check");
                    break;
                }
            };
            let Ok(Ok(refresh)) = secrets.open(&sealed).map(String::from_utf8) else {
                tracing::warn!(user = %user.username, "a stored refresh token cannot be opened; forgetting it");
                let _ = store.forget_refresh(user.id).await;
                continue;
            };
            match oidc.refresh(refresh).await {
                Ok(None) => {}
                Ok(Some(next)) => match secrets.seal(next.as_bytes()) {
                    Ok(sealed) => {
                        if let Err(e) = store.save_refresh(user.id, &sealed).await {
                            tracing::warn!(user = %user.username, error = %e, "cannot keep a rotated refresh token");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot seal a refresh token"),
                },
                Err(RefreshError::Unavailable(why)) => {
                    tracing::warn!(user = %user.username, %why, "cannot check a sign-in with the provider; trying later");
                }
                Err(RefreshError::Refused(why)) => {
                    let record = crate::store::AuditRecord {
                        actor_id: None,
                        actor: Some("identity provider".into()),
                        action: "user.suspend",
                        target_kind: "user",
                        target: user.username.clone(),
                        source: None,
                        changes: serde_json::json!({
                            "status": ["active", "suspended"],
                            "why": [null, format!("the provider refused to refresh their sign-in: {why}")],
                        }),
                    };
                    let _ = store.forget_refresh(user.id).await;
                    match store.set_suspended(user.id, true, &record).await {
                        Ok(_) => {
                            tracing::info!(user = %user.username, %why, "suspended: the provider refused their refresh token")
                        }
                        Err(e) => {
                            tracing::warn!(user = %user.username, error = %e, "cannot suspend a user the provider refused")
                        }
                    }
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(tick) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn usernames_from_claims() {
        assert_eq!(super::username_from("Alice"), "alice");
        assert_eq!(super::username_from("alice.smith"), "alice-smith");
        assert_eq!(super::username_from(" bob_2 "), "bob-2");
        assert_eq!(super::username_from("a.-b"), "a-b");
        assert_eq!(super::username_from("..."), "");
    }
}
