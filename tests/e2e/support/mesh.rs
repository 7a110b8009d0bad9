//! One builder for the world most tests need: a PostgreSQL cluster, a
//! coordinator and its admin, more users, regions with their replicas, the
//! sample app behind a workspace `dev` (agent `main`), and that agent attached
//! where the test says. Every process listens where it reports (port 0).
//!
//! ```ignore
//! let m = Mesh::builder().user("bob").region("sydney").replicas(2).region("frankfurt")
//!     .workspace(|app| json!([{"slug": "code", "port": app}])).agent_on("frankfurt").start().await;
//! ```

use super::*;

/// A running deployment; every process stops when it is dropped.
pub struct Mesh {
    pub coord: Coordinator,
    pub admin: Api,
    /// The regions, in the order they were asked for.
    pub regions: Vec<Region>,
    /// The sample app the workspace's apps point at (with a workspace).
    pub app: Option<SampleApp>,
    /// The token of workspace `dev`'s agent `main` (with a workspace).
    pub agent_token: Option<String>,
    /// The agent, once attached (with [`MeshBuilder::agent_on`]).
    pub agent: Option<Agent>,
    pub pg: Postgres,
    pub dir: tempfile::TempDir,
}

/// A region of a [`Mesh`].
pub struct Region {
    pub name: String,
    /// Its proxy token.
    pub token: String,
    pub replicas: Vec<Proxy>,
}

struct RegionPlan {
    name: String,
    replicas: usize,
    extra: Vec<String>,
}

/// What [`Mesh::builder`] starts; see the module's example.
pub struct MeshBuilder {
    interval: String,
    coordinator_args: Vec<String>,
    users: Vec<String>,
    regions: Vec<RegionPlan>,
    workspace: Option<Box<dyn FnOnce(u16) -> Value + Send>>,
    agent_on: Option<String>,
}

impl Mesh {
    /// A coordinator with a 1 s health interval and an admin, and nothing else yet.
    pub fn builder() -> MeshBuilder {
        MeshBuilder {
            interval: "1s".into(),
            coordinator_args: Vec::new(),
            users: Vec::new(),
            regions: Vec::new(),
            workspace: None,
            agent_on: None,
        }
    }

    /// Region `name`'s first replica.
    pub fn proxy(&self, name: &str) -> &Proxy {
        &self.replicas(name)[0]
    }

    /// Region `name`'s replicas.
    pub fn replicas(&self, name: &str) -> &[Proxy] {
        &self.region_named(name).replicas
    }

    /// Region `name`'s proxy token.
    pub fn token(&self, name: &str) -> &str {
        &self.region_named(name).token
    }

    fn region_named(&self, name: &str) -> &Region {
        self.regions.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no region {name}"))
    }

    /// Takes region `name`'s first replica out of the mesh (to own it).
    pub fn take_proxy(&mut self, name: &str) -> Proxy {
        let region = self.regions.iter_mut().find(|r| r.name == name).unwrap_or_else(|| panic!("no region {name}"));
        region.replicas.remove(0)
    }

    /// Signs in as `user` (made with [`MeshBuilder::user`]).
    pub async fn login(&self, user: &str) -> Api {
        Api::login(&self.coord.url, user, &password_of(user)).await
    }

    /// Creates region `name` and starts a replica with `extra` flags, reaching
    /// the coordinator at `coordinator_url`; waits until it is healthy.
    pub async fn region_via(&self, name: &str, coordinator_url: &str, extra: &[&str]) -> Proxy {
        let token = self.admin.create_region(name).await;
        start_replica(&self.admin, self.dir.path(), coordinator_url, &token, name, extra).await
    }

    /// [`Mesh::region_via`] the coordinator itself.
    pub async fn region(&self, name: &str, extra: &[&str]) -> Proxy {
        self.region_via(name, &self.coord.url.clone(), extra).await
    }

    /// Starts workspace `dev`'s agent with `extra` flags (not waiting for it).
    pub fn agent(&self, extra: &[&str]) -> Agent {
        let token = self.agent_token.as_deref().expect("the mesh has a workspace");
        Agent::spawn_with(self.dir.path(), &self.coord.url, token, extra)
    }

    /// A browser signed in as the admin that has opened app `code` through
    /// `proxy` of `region` once (so it holds an app token for that host).
    pub async fn user_of(&self, region: &str, proxy: &Proxy) -> (reqwest::Client, String) {
        let url = format!("http://code--main--dev--admin.{region}.localhost:{}/", proxy.port);
        let client = browser();
        browser_login(&client, &self.coord.url, "admin", ADMIN_PASSWORD).await;
        let (hops, resp) = follow(&client, &url).await;
        assert_eq!(resp.status(), 200, "{hops:?}");
        (client, url)
    }
}

/// The password [`MeshBuilder::user`] gives `user`.
pub fn password_of(user: &str) -> String {
    if user == "admin" {
        ADMIN_PASSWORD.to_owned()
    } else {
        format!("{user}-password")
    }
}

async fn start_replica(admin: &Api, dir: &Path, coordinator: &str, token: &str, name: &str, extra: &[&str]) -> Proxy {
    let mut proxy = Proxy::spawn_named(dir, coordinator, token, name, extra).await;
    proxy.wait_registered().await;
    admin.wait_status(name, "ok", Duration::from_secs(10)).await;
    proxy
}

impl MeshBuilder {
    /// The coordinator's health interval (and the proxies' heartbeat).
    pub fn interval(mut self, interval: &str) -> Self {
        self.interval = interval.into();
        self
    }

    /// More coordinator flags.
    pub fn coordinator_args(mut self, args: &[&str]) -> Self {
        self.coordinator_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// A member `name` with password `<name>-password` ([`password_of`]).
    pub fn user(mut self, name: &str) -> Self {
        self.users.push(name.into());
        self
    }

    /// Region `name` with one replica (proxies serve `*.{name}.localhost`).
    pub fn region(self, name: &str) -> Self {
        self.region_with(name, &[])
    }

    /// Region `name` whose replicas get `extra` flags.
    pub fn region_with(mut self, name: &str, extra: &[&str]) -> Self {
        let extra = extra.iter().map(|a| a.to_string()).collect();
        self.regions.push(RegionPlan { name: name.into(), replicas: 1, extra });
        self
    }

    /// The last region named gets `n` replicas.
    pub fn replicas(mut self, n: usize) -> Self {
        self.regions.last_mut().expect("replicas() follows region()").replicas = n;
        self
    }

    /// The sample app, and the admin's workspace `dev` with one agent `main`
    /// whose apps are `apps(sample app's port)`.
    pub fn workspace(mut self, apps: impl FnOnce(u16) -> Value + Send + 'static) -> Self {
        self.workspace = Some(Box::new(apps));
        self
    }

    /// The workspace's agent, preferring `region`, attached before `start` returns.
    pub fn agent_on(mut self, region: &str) -> Self {
        self.agent_on = Some(region.into());
        self
    }

    pub async fn start(self) -> Mesh {
        let dir = tempdir();
        let pg = Postgres::start().await;
        let extra: Vec<&str> = self.coordinator_args.iter().map(String::as_str).collect();
        let coord = Coordinator::start(dir.path(), &pg.url(), &self.interval, &extra).await;
        let admin = coord.admin().await;
        for user in &self.users {
            admin
                .post("/api/v2/users", json!({"username": user, "password": password_of(user)}))
                .await
                .expect_status(201);
        }
        let mut regions = Vec::new();
        for plan in &self.regions {
            let token = admin.create_region(&plan.name).await;
            let extra: Vec<&str> = plan.extra.iter().map(String::as_str).collect();
            let mut replicas = Vec::new();
            for _ in 0..plan.replicas {
                replicas.push(start_replica(&admin, dir.path(), &coord.url, &token, &plan.name, &extra).await);
            }
            regions.push(Region { name: plan.name.clone(), token, replicas });
        }
        let mut mesh = Mesh { coord, admin, regions, app: None, agent_token: None, agent: None, pg, dir };
        if let Some(apps) = self.workspace {
            let app = SampleApp::start(mesh.dir.path()).await;
            let spec = json!({"name": "dev", "agents": [{"name": "main", "apps": apps(app.port)}]});
            let created = mesh.admin.post("/api/v2/workspaces", spec).await.expect_status(201);
            mesh.agent_token = Some(created["agent_tokens"]["main"].as_str().unwrap().to_owned());
            mesh.app = Some(app);
        }
        if let Some(region) = &self.agent_on {
            mesh.agent = Some(mesh.agent(&["--region", region]));
            mesh.admin.wait_agent_on("dev", region).await;
        }
        mesh
    }
}
