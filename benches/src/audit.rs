//! The audit log at a million records: how long the coordinator takes to
//! answer a page (`GET /api/v2/audit-log`, 50 records, as the admin page
//! asks) with each filter the API offers, the records written straight into
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
    pub query: &'static str,
    pub records: i64,
    pub p50_ms: f64,
    pub max_ms: f64,
}

/// Fills the log and times a page per filter.
pub async fn pages(stack: &Stack, quick: bool) -> Result<Vec<Page>> {
    let records = if quick { QUICK_RECORDS } else { RECORDS };
    let socket = stack.log_dir().join("data").join("run");
    let options = sqlx::postgres::PgConnectOptions::new().socket(socket).username("meridian").database("meridian");
    let db = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_with(options).await?;
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
        (
            "since a day ago",
            format!("&since={}", (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339().replace('+', "%2B")),
        ),
        ("a page deep in the log", format!("&before={deep}")),
    ];
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    for (name, filter) in queries {
        let url = format!("{}/api/v2/audit-log?limit=50{filter}", stack.api.base());
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
            query: name,
            records,
            p50_ms: times[times.len() / 2].as_secs_f64() * 1e3,
            max_ms: times[times.len() - 1].as_secs_f64() * 1e3,
        });
    }
    Ok(out)
}

/// The figures as Markdown.
pub fn markdown(pages: &[Page]) -> String {
    use std::fmt::Write;
    let records = pages.first().map_or(0, |p| p.records);
    let mut out = format!(
        "\n### Audit log pages ({records} records, 50 per page, `GET /api/v2/audit-log`)\n\n| filter | p50 ms | max ms |\n|---|---|---|\n"
    );
    for p in pages {
        let _ = writeln!(out, "| {} | {:.2} | {:.2} |", p.query, p.p50_ms, p.max_ms);
    }
    out
}
