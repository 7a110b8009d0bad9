//! Operator commands: `login`, `regions ...`, `users ...`. Each is one call
//! to the coordinator API through the shared client, printed for a person
//! (or as JSON with `--json`).

use crate::session;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use meridian_regions::api::{CreateRegion, Region};
use meridian_regions::client::{http_client, Client, Credential};
use meridian_regions::token::Secret;
use std::path::PathBuf;
use std::process::ExitCode;

/// Where and as whom operator commands talk to the coordinator.
#[derive(Args, Default)]
pub struct Target {
    /// Coordinator URL [default: the one `meridian login` saved].
    #[arg(long, env = "MERIDIAN_URL", global = true)]
    url: Option<String>,
    /// Session token [default: the one `meridian login` saved].
    #[arg(long, env = "MERIDIAN_SESSION_TOKEN", hide_env_values = true, global = true)]
    session_token: Option<Secret>,
    /// Extra PEM CA certificate to trust for the coordinator's HTTPS.
    #[arg(long, env = "MERIDIAN_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
}

impl Target {
    /// The extra CA certificate (`--ca-cert`), for connections besides the API's.
    pub fn ca_cert(&self) -> Option<&std::path::Path> {
        self.ca_cert.as_deref()
    }

    pub fn client(self) -> Result<Client> {
        let http = http_client(self.ca_cert.as_deref()).map_err(anyhow::Error::msg)?;
        let (url, token) = self.resolve()?;
        Ok(Client::new(&url, Credential::Session(token), http))
    }

    /// The coordinator URL and session token: flags, else the saved login.
    pub fn resolve(self) -> Result<(String, Secret)> {
        let stored = session::load()?;
        let url = self
            .url
            .or_else(|| stored.as_ref().map(|s| s.url.clone()))
            .context("no coordinator URL: run `meridian login URL` or pass --url")?;
        let token = self
            .session_token
            .or_else(|| stored.map(|s| Secret::new(s.session_token)))
            .context("not signed in: run `meridian login` or pass --session-token")?;
        Ok((url, token))
    }
}

#[derive(Args)]
pub struct LoginArgs {
    /// Coordinator URL, e.g. http://127.0.0.1:7080.
    #[arg(env = "MERIDIAN_URL")]
    url: String,
    /// Sign in with this username and --password [default: sign in through
    /// the browser: the coordinator's sign-in page, with its identity provider].
    #[arg(long, env = "MERIDIAN_USERNAME", requires = "password")]
    username: Option<String>,
    #[arg(long, env = "MERIDIAN_PASSWORD", hide_env_values = true, requires = "username")]
    password: Option<Secret>,
    /// Create this user as the first (admin) user; only works while none exists.
    #[arg(long, requires = "username")]
    first_user: bool,
    /// Sign in through a browser on another machine: print the address to
    /// visit, and read the code that page shows.
    #[arg(long)]
    no_browser: bool,
    #[arg(long, env = "MERIDIAN_CA_CERT")]
    ca_cert: Option<PathBuf>,
}

#[derive(Args)]
pub struct RegionsArgs {
    #[command(subcommand)]
    command: RegionsCommand,
    #[command(flatten)]
    target: Target,
}

/// A region's name, display name and hostnames, for `regions create` and `regions edit`.
#[derive(clap::Args)]
struct RegionArgs {
    name: String,
    #[arg(long)]
    display_name: Option<String>,
    /// The URL the region's proxies serve at, e.g. https://sydney.example.com
    /// [create: default pinned by the region's first registration].
    #[arg(long)]
    access_url: Option<String>,
    /// The region's wildcard app host, e.g. `*.sydney.example.com`; "" for none
    /// [create: default pinned by the region's first registration].
    #[arg(long)]
    wildcard_hostname: Option<String>,
}

#[derive(Subcommand)]
enum RegionsCommand {
    /// List regions with their health and last heartbeat.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a region and print its proxy token (shown once).
    Create {
        #[command(flatten)]
        region: RegionArgs,
    },
    /// Change a region's display name or hostnames (the hosts its proxies may
    /// register: once set or pinned, only this changes them).
    Edit {
        #[command(flatten)]
        region: RegionArgs,
    },
    /// Delete a region; its proxies' token stops working.
    Delete { name: String },
    /// Replace a region's proxy token; the old one stops working at once.
    RegenerateToken { name: String },
    /// Measure latency from here to every healthy region and mark the best.
    Ping {
        /// Timed checks per region (after one that opens the connection).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
        count: u16,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct UsersArgs {
    #[command(subcommand)]
    command: UsersCommand,
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Create a user (admins only).
    Create {
        username: String,
        #[arg(long, env = "MERIDIAN_NEW_USER_PASSWORD", hide_env_values = true)]
        password: Secret,
        #[arg(long)]
        admin: bool,
    },
    /// List users: role, how they sign in, status, last sign-in, live sessions (admins only).
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Suspend a user: their sessions end, and every region cuts their open apps,
    /// WebSockets, shells and forwarded ports within seconds (admins only).
    Suspend { username: String },
    /// Let a suspended user sign in again (admins only).
    Activate { username: String },
    /// List a user's sessions (yours, or anyone's for an admin), or end them.
    Sessions {
        username: String,
        /// End every session: signed out everywhere; regions cut what they opened.
        #[arg(long, conflicts_with = "revoke")]
        revoke_all: bool,
        /// End one session (by id).
        #[arg(long)]
        revoke: Option<uuid::Uuid>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// Writes `text` to stdout; a closed pipe (`| head`) ends the output quietly.
pub fn print(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Runs an operator command on a small runtime; errors print one line, exit 1.
pub fn run(fut: impl std::future::Future<Output = Result<()>>) -> ExitCode {
    run_code(async { fut.await.map(|()| ExitCode::SUCCESS) })
}

/// [`run`] for a command whose exit status is its own (`meridian ssh -- CMD`).
pub fn run_code(fut: impl std::future::Future<Output = Result<ExitCode>>) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(fut));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meridian: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub async fn login(args: LoginArgs) -> Result<()> {
    let http = http_client(args.ca_cert.as_deref()).map_err(anyhow::Error::msg)?;
    let client = Client::new(&args.url, Credential::None, http);
    let token = match (&args.username, &args.password) {
        (Some(username), Some(password)) if args.first_user => {
            client.first_user(username, password.expose()).await?.session_token
        }
        (Some(username), Some(password)) => client.login(username, password.expose()).await?.session_token,
        _ => crate::browser_login::sign_in(&client, !args.no_browser).await?,
    };
    let http = http_client(args.ca_cert.as_deref()).map_err(anyhow::Error::msg)?;
    let signed_in = Client::new(client.base_url(), Credential::Session(Secret::new(token.clone())), http);
    let me = signed_in.me().await?;
    let path = session::save(&session::Stored { url: client.base_url().to_owned(), session_token: token })?;
    println!("Signed in to {} as {}; session saved in {}", client.base_url(), me.username, path.display());
    Ok(())
}

pub async fn regions(args: RegionsArgs) -> Result<()> {
    let ca_cert = args.target.ca_cert.clone();
    let client = args.target.client()?;
    match args.command {
        RegionsCommand::List { json } => {
            let list = client.regions().await?;
            if json {
                print(&(serde_json::to_string_pretty(&list)? + "\n"));
            } else {
                print(&region_table(&list.regions));
            }
        }
        RegionsCommand::Create { region: RegionArgs { name, display_name, access_url, wildcard_hostname } } => {
            let hosts = meridian_regions::api::RegionHosts { access_url, wildcard_hostname };
            let resp = client.create_region(&CreateRegion { name, display_name, hosts }).await?;
            println!("Created region {}. Its proxy token (shown once, store it safely):", resp.region.name);
            println!();
            println!("  {}", resp.proxy_token);
            println!();
            println!(
                "Start a proxy with: meridian proxy --coordinator-url {} --proxy-token <token> --access-url <URL>",
                client.base_url()
            );
        }
        RegionsCommand::Edit { region: RegionArgs { name, display_name, access_url, wildcard_hostname } } => {
            let hosts = meridian_regions::api::RegionHosts { access_url, wildcard_hostname };
            let region =
                client.update_region(&name, &meridian_regions::api::PatchRegion { display_name, hosts }).await?;
            print(&region_table(std::slice::from_ref(&region)));
        }
        RegionsCommand::Delete { name } => {
            client.delete_region(&name).await?;
            println!("Deleted region {name}.");
        }
        RegionsCommand::Ping { count, json } => {
            let regions = client.regions().await?.regions;
            let http = http_client(ca_cert.as_deref()).map_err(anyhow::Error::msg)?;
            let pings = meridian_regions::selection::ping_all(&http, &regions, count.into()).await;
            if json {
                print(&(serde_json::to_string_pretty(&serde_json::json!({ "regions": pings }))? + "\n"));
            } else {
                print(&ping_table(&pings));
            }
        }
        RegionsCommand::RegenerateToken { name } => {
            let resp = client.regenerate_token(&name).await?;
            println!("New proxy token for {name} (the old one no longer works):");
            println!();
            println!("  {}", resp.proxy_token);
        }
    }
    Ok(())
}

pub async fn users(args: UsersArgs) -> Result<()> {
    let client = args.target.client()?;
    match args.command {
        UsersCommand::Create { username, password, admin } => {
            if password.expose().is_empty() {
                bail!("--password is empty");
            }
            let user = client.create_user(&username, password.expose(), admin).await?;
            println!("Created user {}{}.", user.username, if user.admin { " (admin)" } else { "" });
        }
        UsersCommand::List { json } => {
            let users = client.users().await?.users;
            if json {
                print(&json_lines(&users)?);
                return Ok(());
            }
            let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or_else(|| "never".to_owned(), |t| t.format("%Y-%m-%d %H:%M").to_string())
            };
            let mut rows = vec![["USER", "ROLE", "SIGN-IN", "STATUS", "LAST SIGN-IN", "SESSIONS"].map(String::from)];
            for u in users {
                let role = if u.user.admin { "admin" } else { "member" };
                let (sessions, last) = (u.sessions.to_string(), when(u.last_sign_in_at));
                rows.push([u.user.username, role.into(), u.login_type, u.status, last, sessions]);
            }
            print(&aligned(&rows));
        }
        UsersCommand::Suspend { username } => {
            let u = client.set_user_suspended(&username, true).await?;
            println!("Suspended {}: their sessions ended, and every region cuts what they had open.", u.user.username);
        }
        UsersCommand::Activate { username } => {
            let u = client.set_user_suspended(&username, false).await?;
            println!("{} is active again and may sign in.", u.user.username);
        }
        UsersCommand::Sessions { username, revoke_all, revoke, json } => {
            if revoke_all {
                let n = client.revoke_sessions(&username).await?.revoked;
                println!("Ended {n} session(s) of {username}; every region cuts what their tokens opened.");
            } else if let Some(id) = revoke {
                client.revoke_session(&username, id).await?;
                println!("Ended session {id} of {username}.");
            } else {
                let sessions = client.user_sessions(&username).await?.sessions;
                if json {
                    print(&json_lines(&sessions)?);
                    return Ok(());
                }
                let mut rows = vec![["SESSION", "SIGNED IN", "EXPIRES", "APPS"].map(String::from)];
                for s in sessions {
                    let at = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M").to_string();
                    rows.push([s.id.to_string(), at(s.created_at), at(s.expires_at), s.app_sessions.to_string()]);
                }
                print(&aligned(&rows));
            }
        }
    }
    Ok(())
}

/// One JSON object per line.
fn json_lines<T: serde::Serialize>(items: &[T]) -> Result<String> {
    let mut out = String::new();
    for item in items {
        out.push_str(&serde_json::to_string(item)?);
        out.push('\n');
    }
    Ok(out)
}

/// Ping results as a table, the best region marked.
fn ping_table(pings: &[meridian_regions::selection::Ping]) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"));
    let mut rows = vec![["REGION", "STATUS", "LATENCY", "MIN", ""].map(String::from)];
    for p in pings {
        let note = if p.best { "<- best".to_owned() } else { p.error.clone().unwrap_or_default() };
        rows.push([p.region.clone(), p.status.clone(), ms(p.latency_ms), ms(p.min_ms), note]);
    }
    aligned(&rows)
}

/// Rows as left-aligned columns, two spaces apart (widths in characters).
pub fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|r| {
            let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            format!("{}\n", line.join("  ").trim_end())
        })
        .collect()
}

/// Regions as an aligned table: name, status, access URL, replicas, last heartbeat.
fn region_table(regions: &[Region]) -> String {
    let now = chrono::Utc::now();
    let mut rows = vec![["NAME", "STATUS", "ACCESS URL", "REPLICAS", "LAST HEARTBEAT"].map(String::from)];
    for r in regions {
        let heartbeat = r.last_heartbeat_at.map_or_else(
            || "never".to_owned(),
            |t| format!("{}s ago ({})", (now - t).num_seconds().max(0), t.format("%Y-%m-%d %H:%M:%S UTC")),
        );
        let replicas =
            if r.name == meridian_regions::PRIMARY_REGION { "-".to_owned() } else { r.replicas.len().to_string() };
        rows.push([
            r.name.clone(),
            r.status.to_string(),
            r.access_url.clone().unwrap_or_else(|| "-".into()),
            replicas,
            heartbeat,
        ]);
    }
    aligned(&rows)
}
