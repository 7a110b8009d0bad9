//! `meridian workspaces create|list|delete`.

use crate::ops::Target;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use meridian_regions::api::{AgentSpec, App, Cors, CreateWorkspace, Share};

#[derive(Args)]
pub struct WorkspacesArgs {
    #[command(subcommand)]
    command: WorkspacesCommand,
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand)]
enum WorkspacesCommand {
    /// Create a workspace with one agent and its apps; prints the agent's token once.
    Create {
        name: String,
        /// Owner's username (admins only) [default: you].
        #[arg(long)]
        owner: Option<String>,
        /// The agent's name.
        #[arg(long, default_value = "main")]
        agent: String,
        /// An app: `SLUG=PORT` or `SLUG=URL`, then optional `,share=owner|authenticated|public`,
        /// `,path` (serve on a path instead of a subdomain) and `,cors=passthru`. Repeatable.
        ///
        /// `cors=passthru` is DANGEROUS: the app's own CORS headers reach browsers, so
        /// if it reflects `Origin` with credentials (as many dev servers do) any site
        /// the app allows can read it as whoever opens it. By default (`cors=default`)
        /// proxies drop an app's `Access-Control-*` headers unless the request comes
        /// from the app's own origin; even with passthru, never for another user's app
        /// or a sandboxed page.
        #[arg(long = "app", value_parser = parse_app)]
        apps: Vec<App>,
    },
    /// List your workspaces (admins: `--owner NAME` or `--owner all`).
    List {
        #[arg(long)]
        owner: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a workspace (yours, or with `--owner`, an admin's choice).
    Delete {
        name: String,
        #[arg(long)]
        owner: Option<String>,
    },
}

pub async fn run(args: WorkspacesArgs) -> Result<()> {
    let client = args.target.client()?;
    match args.command {
        WorkspacesCommand::Create { name, owner, agent, apps } => {
            let req = CreateWorkspace { name, owner, agents: vec![AgentSpec { name: agent, apps }] };
            let resp = client.create_workspace(&req).await?;
            println!("Created workspace {}/{}.", resp.workspace.owner, resp.workspace.name);
            for (agent, token) in &resp.agent_tokens {
                println!("Agent {agent}'s token (shown once; pass it to `meridian agent --agent-token`):");
                println!();
                println!("  {token}");
            }
        }
        WorkspacesCommand::List { owner, json } => {
            let list = client.workspaces(owner.as_deref()).await?;
            if json {
                crate::ops::print(&(serde_json::to_string_pretty(&list)? + "\n"));
                return Ok(());
            }
            let mut out = format!("{:<12} {:<16} {:<10} {:<12} APPS\n", "OWNER", "WORKSPACE", "AGENT", "STATUS");
            for w in &list.workspaces {
                for a in &w.agents {
                    let status = match (&a.region, a.connected) {
                        (Some(r), true) => format!("on {r}"),
                        _ => "offline".to_owned(),
                    };
                    let apps: Vec<&str> = a.apps.iter().map(|x| x.slug.as_str()).collect();
                    out.push_str(&format!(
                        "{:<12} {:<16} {:<10} {:<12} {}\n",
                        w.owner,
                        w.name,
                        a.name,
                        status,
                        apps.join(",")
                    ));
                }
            }
            crate::ops::print(&out);
        }
        WorkspacesCommand::Delete { name, owner } => {
            let owner = match owner {
                Some(o) => o,
                None => client.me().await?.username,
            };
            client.delete_workspace(&owner, &name).await?;
            println!("Deleted workspace {owner}/{name}.");
        }
    }
    Ok(())
}

/// `code=8080`, `nb=http://127.0.0.1:8888,share=public`, `docs=3000,path`,
/// `api=3001,cors=passthru`.
fn parse_app(spec: &str) -> Result<App> {
    let mut parts = spec.split(',');
    let (slug, target) =
        parts.next().and_then(|p| p.split_once('=')).context("an app looks like SLUG=PORT or SLUG=URL")?;
    let mut app =
        App { slug: slug.to_owned(), port: None, url: None, subdomain: true, share: Share::Owner, cors: Cors::Default };
    match target.parse::<u16>() {
        Ok(port) => app.port = Some(port),
        Err(_) => app.url = Some(target.to_owned()),
    }
    for option in parts {
        match option.split_once('=') {
            Some(("share", "owner")) => app.share = Share::Owner,
            Some(("share", "authenticated")) => app.share = Share::Authenticated,
            Some(("share", "public")) => app.share = Share::Public,
            Some(("cors", "default")) => app.cors = Cors::Default,
            Some(("cors", "passthru")) => app.cors = Cors::Passthru,
            None if option == "path" => app.subdomain = false,
            _ => bail!(
                "unknown app option {option:?} (expected share=owner|authenticated|public, cors=default|passthru or path)"
            ),
        }
    }
    Ok(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_specs() {
        let a = parse_app("code=8080").unwrap();
        assert_eq!((a.slug.as_str(), a.port, a.subdomain, a.share), ("code", Some(8080), true, Share::Owner));
        let b = parse_app("nb=http://127.0.0.1:8888,share=public,path").unwrap();
        assert_eq!((b.url.as_deref(), b.subdomain, b.share), (Some("http://127.0.0.1:8888"), false, Share::Public));
        let c = parse_app("api=3001,cors=passthru").unwrap();
        assert_eq!((c.port, c.cors), (Some(3001), Cors::Passthru));
        for bad in ["code", "code=8080,share=everyone", "code=8080,shiny", "code=8080,cors=all"] {
            assert!(parse_app(bad).is_err(), "{bad}");
        }
    }
}
