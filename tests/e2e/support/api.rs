//! The coordinator's API as tests call it: an admin or user client and the proxy calls.

use super::*;

/// A coordinator API client with an optional session token.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// The body, after checking the status (printing the body if it differs).
    pub fn expect_status(self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.body);
        self.body
    }
}

impl Api {
    pub fn anonymous(base: &str) -> Self {
        Self { http: bounded_client(), base: base.into(), token: None }
    }

    pub fn with_token(base: &str, token: &str) -> Self {
        Self { http: bounded_client(), base: base.into(), token: Some(token.into()) }
    }

    /// A client sending requests through `http` (e.g. one trusting a test CA).
    pub fn with_http(base: &str, http: reqwest::Client, token: Option<&str>) -> Self {
        Self { http, base: base.into(), token: token.map(str::to_owned) }
    }

    /// Signs in as `username` and returns a client with that session.
    pub async fn login(base: &str, username: &str, password: &str) -> Self {
        let body = serde_json::json!({ "username": username, "password": password });
        let reply = Self::anonymous(base).post("/api/v2/users/login", body).await.expect_status(200);
        Self::with_token(base, reply["session_token"].as_str().unwrap())
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("Meridian-Session-Token", t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request to the coordinator failed");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Reply { status, body }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The session token this client sends.
    pub fn token(&self) -> &str {
        self.token.as_deref().unwrap_or_default()
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str) -> Reply {
        self.send(reqwest::Method::PUT, path, None).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// Every entry of a paged log (`GET {path}?{query}`, `{entries, next}`),
    /// newest first, following `next` as `before`.
    pub async fn every_page(&self, path: &str, query: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut before: Option<i64> = None;
        loop {
            let page_query = match before {
                Some(b) => format!("{query}&before={b}"),
                None => query.to_owned(),
            };
            let page = self.get(&format!("{path}?{page_query}")).await.expect_status(200);
            all.extend(page["entries"].as_array().expect("a page of entries").iter().cloned());
            match page["next"].as_i64() {
                Some(next) => before = Some(next),
                None => return all,
            }
        }
    }

    /// Creates a region and returns its proxy token.
    pub async fn create_region(&self, name: &str) -> String {
        let body = self.post("/api/v2/regions", json!({"name": name, "display_name": name})).await.expect_status(201);
        body["proxy_token"].as_str().unwrap().to_owned()
    }

    /// The region named `name` as the API lists it.
    pub async fn region(&self, name: &str) -> Value {
        let list = self.get("/api/v2/regions").await.expect_status(200);
        list["regions"].as_array().unwrap().iter().find(|r| r["name"] == name).cloned().expect("region listed")
    }

    /// Waits until region `name` has `status`; returns how long that took.
    pub async fn wait_status(&self, name: &str, status: &str, deadline: Duration) -> Duration {
        let start = Instant::now();
        wait_for(deadline, &format!("region {name} to be {status}"), || async {
            (self.region(name).await["status"] == status).then_some(())
        })
        .await;
        start.elapsed()
    }
}

/// `POST`s `body` to the coordinator's `path` as a proxy holding `proxy_token`.
pub async fn proxy_call(base: &str, proxy_token: &str, path: &str, body: Value) -> Reply {
    let resp = bounded_client()
        .post(format!("{base}{path}"))
        .header("Meridian-Proxy-Token", proxy_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    Reply { status, body: resp.json().await.unwrap_or(Value::Null) }
}

impl Api {
    /// Creates workspace `dev` (agent `main`) with the public app `open` on
    /// `app_port`, starts its agent preferring `region`, and waits until it is attached.
    pub async fn public_app_workspace(&self, dir: &Path, coordinator: &str, app_port: u16, region: &str) -> Agent {
        let apps = json!([{"slug": "open", "port": app_port, "share": "public"}]);
        let created = self
            .post("/api/v2/workspaces", json!({"name": "dev", "agents": [{"name": "main", "apps": apps}]}))
            .await
            .expect_status(201);
        let agent = Agent::spawn(dir, coordinator, created["agent_tokens"]["main"].as_str().unwrap(), Some(region));
        self.wait_agent_on("dev", region).await;
        agent
    }

    /// Waits until `owner`'s workspace `ws` has its agent connected to `region`.
    pub async fn wait_agent_on(&self, ws: &str, region: &str) -> Duration {
        self.wait_agent_within(ws, region, Duration::from_secs(20)).await
    }

    /// The region the workspace's first agent is connected to, if it is.
    pub async fn agent_region(&self, ws: &str) -> Option<String> {
        let list = self.get("/api/v2/workspaces?owner=all").await.body;
        let found = list["workspaces"].as_array()?.iter().find(|w| w["name"] == ws)?.clone();
        let agent = &found["agents"][0];
        (agent["connected"] == true).then(|| agent["region"].as_str().map(str::to_owned)).flatten()
    }

    /// [`Api::wait_agent_on`] with a deadline; returns how long it took.
    pub async fn wait_agent_within(&self, ws: &str, region: &str, deadline: Duration) -> Duration {
        let start = Instant::now();
        wait_for(deadline, &format!("agent of {ws} on {region}"), || async {
            let list = self.get("/api/v2/workspaces?owner=all").await.body;
            let found = list["workspaces"].as_array()?.iter().find(|w| w["name"] == ws)?.clone();
            let agent = found["agents"][0].clone();
            (agent["connected"] == true && agent["region"] == region).then_some(())
        })
        .await;
        start.elapsed()
    }
}
