//! `meridian connections list`: the connection log, newest first, as a table
//! or (`--json`) as JSON lines, one record per line, which is also the export
//! (`--all` follows every page). Admins see everyone's sessions, members
//! their own.

use crate::audit::Pages;
use crate::ops::Target;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use meridian_regions::connection_log::{ConnectionEntry, ConnectionQuery, Kind};

#[derive(Args)]
pub struct ConnectionsArgs {
    #[command(subcommand)]
    command: ConnectionsCommand,
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand)]
enum ConnectionsCommand {
    /// List sessions through the regions: who reached which app, port, shell or
    /// terminal, when, from where, through which region, for how long, and how it ended.
    List {
        /// Only this user's sessions (admins; members always see only their own).
        #[arg(long)]
        user: Option<String>,
        /// Only sessions to this workspace (`owner/name`, or a name).
        #[arg(long)]
        workspace: Option<String>,
        /// Only sessions through this region.
        #[arg(long)]
        region: Option<String>,
        /// Only this kind: app, websocket, tcp, ssh, terminal, or refused.
        #[arg(long)]
        kind: Option<String>,
        /// Sessions by when they started.
        #[command(flatten)]
        pages: Pages,
    },
}

pub async fn run(args: ConnectionsArgs) -> Result<()> {
    let client = args.target.client()?;
    let ConnectionsCommand::List { user, workspace, region, kind, pages } = args.command;
    let Pages { since, until, limit, all, json } = pages;
    let mut query = ConnectionQuery { user, workspace, region, kind, since, until, before: None, limit };
    let mut first = true;
    loop {
        let page = client.connection_log(&query).await.context("cannot read the connection log")?;
        for e in &page.entries {
            if json {
                println!("{}", serde_json::to_string(e)?);
                continue;
            }
            if first {
                println!(
                    "{:<20}  {:>8}  {:<12}  {:<10}  {:<24}  {:<10}  {:<15}  {:>10}  {:>10}  ENDED",
                    "STARTED", "SECONDS", "USER", "REGION", "WORKSPACE/AGENT", "TARGET", "FROM", "UP", "DOWN"
                );
                first = false;
            }
            println!("{}", row(e));
        }
        match page.next {
            Some(next) if all => query.before = Some(next),
            _ if first && !json => {
                println!("No connection records match.");
                return Ok(());
            }
            _ => return Ok(()),
        }
    }
}

fn row(e: &ConnectionEntry) -> String {
    let r = &e.record;
    let seconds = (r.ended_at - r.started_at).num_milliseconds() as f64 / 1000.0;
    let place = match &r.agent {
        Some(agent) => format!("{}/{}.{agent}", r.owner, r.workspace),
        None => format!("{}/{}", r.owner, r.workspace),
    };
    let target = match r.kind {
        Kind::App => r.target.clone(),
        Kind::WebSocket => format!("ws:{}", r.target),
        Kind::Tcp => format!("tcp:{}", r.target),
        Kind::Ssh | Kind::Terminal => r.kind.as_str().to_owned(),
    };
    let ended = match &r.reason {
        Some(reason) => format!("{} ({reason})", r.ending.as_str()),
        None => r.ending.as_str().to_owned(),
    };
    format!(
        "{:<20}  {seconds:>8.1}  {:<12}  {:<10}  {place:<24}  {target:<10}  {:<15}  {:>10}  {:>10}  {ended}",
        r.started_at.format("%Y-%m-%d %H:%M:%S"),
        e.user.as_deref().unwrap_or("-"),
        e.region,
        r.client_addr.as_deref().unwrap_or("-"),
        r.bytes_up,
        r.bytes_down,
    )
}
