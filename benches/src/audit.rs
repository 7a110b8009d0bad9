//! The audit and connection logs at a million records each: how long the
//! coordinator takes to answer a page (`GET /api/v2/audit-log`,
//! `/api/v2/connection-log`, 50 records, as the dashboard asks) with each
//! filter the API offers, the records written straight into
//! the stack coordinator's database (its embedded Postgres, over its socket).
//! The figure is the median of [`SAMPLES`] requests, measured from the client.

use crate::stack::Stack;
use anyhow::{Context, Result};
use std::time::{Duration, Instant};

/// Records inserted (10,000 in a quick run).
const RECORDS: i64 = 1_000_000;
const QUICK_RECORDS: i64 = 10_000;
/// Requests timed per query.
const SAMPLES: usize = 20;

/// One query's page time.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Page {
    /// `audit-log` or `connection-log`.
    pub log: &'static str,
    pub query: &'static str,
    pub records: i64,
    pub p50_ms: f64,
    pub max_ms: f64,
}

/// Fills the log and times a page per filter.
pub async fn pages(stack: &Stack, quick: bool) -> Result<Vec<Page>> {
    let records = if quick { QUICK_RECORDS } else { RECORDS };
    let db = database(stack).await?;
    // 1,000 actors, 10 actions over 3 kinds, 10,000 targets, a year of times.
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, target_kind, target, source, changes) \
         SELECT now() - (i % 525600) * interval '1 minute', 'user' || (i % 1000), \
                (ARRAY['user.login','user.logout','user.login_failed','user.create','region.create', \
                       'region.update','region.delete','region.regenerate_token','workspace.create', \
                       'workspace.delete'])[1 + i % 10], \
                'user', 'target' || (i % 10000), '127.0.0.1', '{}'::jsonb \
         FROM generate_series(1, $1) AS i",
    )
    .bind(records)
    .execute(&db)
    .await
    .context("cannot fill the audit log")?;
    sqlx::query("ANALYZE audit_log").execute(&db).await?;
    let deep = records / 2;
    let queries: [(&'static str, String); 6] = [
        ("newest", String::new()),
        ("user", "&user=user42".into()),
        ("kind of action", "&action=region".into()),
        ("target", "&target=target4242".into()),
        ("since a day ago", format!("&since={}", day_ago())),
        ("a page deep in the log", format!("&before={deep}")),
    ];
    time_pages(stack, "audit-log", records, queries).await
}

/// Fills the connection log (as regions would have) and times a page per filter.
pub async fn connection_pages(stack: &Stack, quick: bool) -> Result<Vec<Page>> {
    let records = if quick { QUICK_RECORDS } else { RECORDS };
    let db = database(stack).await?;
    // 1,000 users, 100 owners with 10 workspaces each, 5 regions, 5 kinds, a year of times.
    sqlx::query(
        "INSERT INTO connection_log (id, region, replica_id, kind, started_at, ended_at, user_id, username, \
         owner, workspace, agent, target, client_addr, user_agent, bytes_up, bytes_down, requests, statuses, ending) \
         SELECT gen_random_uuid(), (ARRAY['primary','sydney','frankfurt','virginia','tokyo'])[1 + i % 5], \
                gen_random_uuid(), (ARRAY['app','websocket','tcp','ssh','terminal'])[1 + i % 5], \
                now() - (i % 525600) * interval '1 minute', now() - (i % 525600) * interval '1 minute', \
                NULL, 'user' || (i % 1000), 'owner' || (i % 100), 'ws' || (i % 10), 'main', 'code', \
                '127.0.0.1', 'bench', i, i * 2, 1, '{\"2xx\": 1}'::jsonb, \
                CASE WHEN i % 50 = 0 THEN 'refused' ELSE 'closed' END \
         FROM generate_series(1, $1) AS i",
    )
    .bind(records)
    .execute(&db)
    .await
    .context("cannot fill the connection log")?;
    sqlx::query("ANALYZE connection_log").execute(&db).await?;
    let deep = records / 2;
    let queries: [(&'static str, String); 7] = [
        ("newest", String::new()),
        ("user", "&user=user42".into()),
        ("workspace", "&workspace=owner42/ws2".into()),
        ("region", "&region=tokyo".into()),
        ("kind: refused", "&kind=refused".into()),
        ("since a day ago", format!("&since={}", day_ago())),
        ("a page deep in the log", format!("&before={deep}")),
    ];
    time_pages(stack, "connection-log", records, queries).await
}

/// The stack coordinator's database (its embedded Postgres, over its socket).
async fn database(stack: &Stack) -> Result<sqlx::PgPool> {
    let socket = stack.log_dir().join("data").join("run");
    let options = sqlx::postgres::PgConnectOptions::new().socket(socket).username("meridian").database("meridian");
    Ok(sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_with(options).await?)
}

fn day_ago() -> String {
    (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339().replace('+', "%2B")
}

/// The median and slowest of [`SAMPLES`] pages of 50 of `/api/v2/{log}` per query.
async fn time_pages<const N: usize>(
    stack: &Stack,
    log: &'static str,
    records: i64,
    queries: [(&'static str, String); N],
) -> Result<Vec<Page>> {
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    for (name, filter) in queries {
        let url = format!("{}/api/v2/{log}?limit=50{filter}", stack.api.base());
        let mut times = Vec::with_capacity(SAMPLES);
        for _ in 0..=SAMPLES {
            let start = Instant::now();
            let resp = http
                .get(&url)
                .header("Meridian-Session-Token", stack.api.session().expose())
                .timeout(Duration::from_secs(30))
                .send()
                .await?;
            let status = resp.status();
            let body: serde_json::Value = resp.json().await?;
            anyhow::ensure!(status.is_success(), "{url}: HTTP {status}: {body}");
            anyhow::ensure!(body["entries"].as_array().is_some_and(|e| !e.is_empty()), "{url}: an empty page");
            times.push(start.elapsed());
        }
        times.remove(0); // the first warms the connection
        times.sort();
        out.push(Page {
            log,
            query: name,
            records,
            p50_ms: times[times.len() / 2].as_secs_f64() * 1e3,
            max_ms: times[times.len() - 1].as_secs_f64() * 1e3,
        });
    }
    Ok(out)
}

/// The figures as Markdown, a table per log.
pub fn markdown(pages: &[Page]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for log in ["audit-log", "connection-log"] {
        let Some(first) = pages.iter().find(|p| p.log == log) else { continue };
        let title = if log == "audit-log" { "Audit log" } else { "Connection log" };
        let _ = write!(
            out,
            "\n### {title} pages ({} records, 50 per page, `GET /api/v2/{log}`)\n\n| filter | p50 ms | max ms |\n|---|---|---|\n",
            first.records
        );
        for p in pages.iter().filter(|p| p.log == log) {
            let _ = writeln!(out, "| {} | {:.2} | {:.2} |", p.query, p.p50_ms, p.max_ms);
        }
    }
    out
}
