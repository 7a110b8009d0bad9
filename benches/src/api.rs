//! The few coordinator calls a benchmark run needs, and a signed-in app cookie.

use crate::stack::wait_until;
use anyhow::{bail, Context, Result};
use meridian_regions::api::{AgentSpec, App, Cors, CreateRegion, CreateWorkspace, Share};
use meridian_regions::client::{Client, Credential};
use meridian_regions::token::Secret;
use std::path::Path;
use std::time::Duration;

const PASSWORD: &str = "bench-password";
/// Longest wait for the deployment to settle.
const DEADLINE: Duration = Duration::from_secs(60);

pub struct Api {
    base: String,
    client: Client,
    /// The admin's session (for `meridian port-forward --session-token`).
    session: Secret,
}

impl Api {
    pub async fn first_user(base: &str) -> Result<Self> {
        let http = meridian_regions::client::http_client(None).map_err(anyhow::Error::msg)?;
        let anon = Client::new(base, Credential::None, http.clone());
        let session = Secret::new(anon.first_user("admin", PASSWORD).await?.session_token);
        let client = Client::new(base, Credential::Session(session.clone()), http);
        Ok(Self { base: base.to_owned(), client, session })
    }

    /// The admin's session token.
    pub fn session(&self) -> &Secret {
        &self.session
    }

    /// The coordinator's URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn create_region(&self, name: &str) -> Result<String> {
        Ok(self
            .client
            .create_region(&CreateRegion { name: name.into(), display_name: None, hosts: Default::default() })
            .await?
            .proxy_token)
    }

    /// A workspace whose agents (one per name in `agents`) serve the app on
    /// `app_port`; their tokens, in the same order.
    pub async fn create_workspace(&self, app_port: u16, agents: &[&str]) -> Result<Vec<String>> {
        let app = App {
            slug: "code".into(),
            port: Some(app_port),
            url: None,
            subdomain: true,
            share: Share::Owner,
            cors: Cors::Default,
        };
        let ws = CreateWorkspace {
            name: "bench".into(),
            owner: None,
            agents: agents.iter().map(|a| AgentSpec { name: (*a).into(), apps: vec![app.clone()] }).collect(),
        };
        let created = self.client.create_workspace(&ws).await?;
        agents.iter().map(|a| Ok(created.agent_tokens.get(*a).context("no agent token")?.clone())).collect()
    }

    pub async fn wait_healthy(&self) -> Result<()> {
        wait_until("every region to be healthy", DEADLINE, || async {
            self.client.regions().await.is_ok_and(|l| l.regions.iter().all(|r| r.healthy))
        })
        .await
    }

    pub async fn wait_agent(&self, agent: &str, region: &str) -> Result<()> {
        wait_until("the agent to attach", DEADLINE, || async {
            let Ok(list) = self.client.workspaces(None).await else { return false };
            list.workspaces
                .iter()
                .flat_map(|w| &w.agents)
                .any(|a| a.name == agent && a.connected && a.region.as_deref() == Some(region))
        })
        .await
    }

    /// Signs in as a browser would, opens `app_url` through the login
    /// redirects, and returns the `Cookie` header that now opens it.
    pub async fn app_cookie(&self, app_url: &str, ca: &Path) -> Result<String> {
        let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
        let browser = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(meridian_regions::resolve::for_reqwest())
            .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca)?)?)
            .build()?;
        let login = serde_json::json!({ "username": "admin", "password": PASSWORD });
        browser.post(format!("{}/api/v2/users/login", self.base)).json(&login).send().await?.error_for_status()?;
        let mut url = reqwest::Url::parse(app_url)?;
        for _ in 0..10 {
            let resp = browser.get(url.clone()).send().await?;
            match resp.status().as_u16() {
                200 => {
                    use reqwest::cookie::CookieStore;
                    let cookies = jar.cookies(&reqwest::Url::parse(app_url)?).context("no app cookies")?;
                    return Ok(cookies.to_str()?.to_owned());
                }
                300..=399 => url = url.join(resp.headers().get("location").context("no Location")?.to_str()?)?,
                s => bail!("HTTP {s} opening {url}"),
            }
        }
        bail!("too many redirects opening {app_url}")
    }
}
