//! `meridian audit list`: the coordinator's audit log (admins), newest
//! first, as a table or (`--json`) as JSON lines, one record per line, which
//! is also the export (`--all` follows every page).

use crate::ops::Target;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use meridian_regions::api::AuditQuery;

#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// List state changes made through the API: who, when, from where, what changed.
    List {
        /// Only what this user did (or, for failed sign-ins, the name tried).
        #[arg(long)]
        user: Option<String>,
        /// Only this action (`region.create`) or kind of action (`region`).
        #[arg(long)]
        action: Option<String>,
        /// Only changes to this user, region or workspace (`owner/name`).
        #[arg(long)]
        target: Option<String>,
        #[command(flatten)]
        pages: Pages,
    },
}

/// Time range and paging, shared by `audit list` and `connections list`.
#[derive(Args)]
pub struct Pages {
    /// Only since then: a duration back from now (`1h`, `7days`) or an RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only before then (same forms as --since).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Records per page [default: 100; at most 1000].
    #[arg(long)]
    pub limit: Option<i64>,
    /// Every page, not only the newest (an export, with --json).
    #[arg(long)]
    pub all: bool,
    /// JSON lines: one record per line.
    #[arg(long)]
    pub json: bool,
}

/// `1h` (that long ago) or `2026-12-06T10:00:00Z`.
fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let ago =
        humantime::parse_duration(s).map_err(|_| format!("{s:?}: expected a duration (1h) or an RFC 3339 time"))?;
    Ok(chrono::Utc::now() - chrono::Duration::from_std(ago).map_err(|e| e.to_string())?)
}

pub async fn run(args: AuditArgs) -> Result<()> {
    let client = args.target.client()?;
    let AuditCommand::List { user, action, target, pages: Pages { since, until, limit, all, json } } = args.command;
    let mut query = AuditQuery { user, action, target, since, until, before: None, limit };
    let mut first = true;
    loop {
        let page = client.audit_log(&query).await.context("cannot read the audit log")?;
        if json {
            for e in &page.entries {
                println!("{}", serde_json::to_string(e)?);
            }
        } else {
            if first {
                println!("{:<20}  {:<14}  {:<24}  {:<24}  {:<15}  CHANGES", "WHEN", "WHO", "ACTION", "TARGET", "FROM");
            }
            for e in &page.entries {
                let changes = if e.changes.as_object().is_some_and(|o| o.is_empty()) {
                    String::new()
                } else {
                    e.changes.to_string()
                };
                println!(
                    "{:<20}  {:<14}  {:<24}  {:<24}  {:<15}  {changes}",
                    e.at.format("%Y-%m-%d %H:%M:%S"),
                    e.actor.as_deref().unwrap_or("-"),
                    e.action,
                    e.target,
                    e.source.as_deref().unwrap_or("-"),
                );
            }
        }
        first = false;
        match page.next {
            Some(next) if all => query.before = Some(next),
            _ => return Ok(()),
        }
    }
}
