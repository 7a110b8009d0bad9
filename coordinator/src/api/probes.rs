//! Probes every process serves: liveness, the health report, latency checks, build info.

use super::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use meridian_regions::api::BuildInfo;
use meridian_regions::health::HealthReport;

/// `GET /healthz`: the process is up. Never touches the database.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /healthz-report`: the primary region's own report; an unreachable
/// database is an error, since the control plane cannot work without it.
pub async fn healthz_report(State(state): State<AppState>) -> Json<HealthReport> {
    let mut errors = Vec::new();
    if let Err(e) = sqlx::query("SELECT 1").execute(state.store.pool()).await {
        errors.push(format!("database unreachable: {e}"));
    }
    let mut report = HealthReport {
        status: if errors.is_empty() { "ok" } else { "degraded" }.into(),
        errors,
        warnings: Vec::new(),
        coordinator_reachable: true,
        last_registration_at: None,
        version: meridian_regions::VERSION.into(),
        connection_log: None,
    };
    // The primary region's own connection log, and its losses, as any region's.
    let proxy = meridian_proxy::endpoints::report(&state.primary_proxy);
    report.warnings.extend(proxy.warnings.into_iter().filter(|w| w.starts_with("connection log")));
    report.connection_log = proxy.connection_log;
    Json(report)
}

/// `GET /latency-check`: an empty 200 that the dashboard's origin (this
/// coordinator's) may read and time.
pub async fn latency_check(State(state): State<AppState>) -> impl IntoResponse {
    let origin = state.config.access_url.origin().ascii_serialization();
    (
        StatusCode::OK,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()),
            (header::HeaderName::from_static("timing-allow-origin"), origin),
            (header::VARY, "Origin".to_owned()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
    )
}

pub async fn buildinfo() -> Json<BuildInfo> {
    Json(BuildInfo { version: meridian_regions::VERSION.into(), role: "coordinator".into() })
}

/// `GET /metrics`: the control plane's state in Prometheus text format, read
/// from the store at scrape time (so every coordinator replica agrees).
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    use prometheus::{Encoder, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
    let registry = Registry::new();
    let regions = IntGaugeVec::new(Opts::new("meridian_regions", "Regions by health status"), &["status"])
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
    let gauge =
        |name: &str, help: &str| IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("static metric: {e}"));
    let replicas = gauge("meridian_region_replicas", "Registered proxy replicas");
    let agents = gauge("meridian_agents_connected", "Agents with a tunnel attached to some relay");
    let db_up = gauge("meridian_database_up", "1 if the coordinator can query Postgres");
    let audit_failures = prometheus::IntCounter::new(
        "meridian_audit_write_failures_total",
        "Audit records this coordinator could not write (the change they describe was made)",
    )
    .unwrap_or_else(|e| unreachable!("static metric: {e}"));
    audit_failures.inc_by(super::audit::WRITE_FAILURES.load(std::sync::atomic::Ordering::Relaxed));
    let _ = registry.register(Box::new(audit_failures));
    let stored = prometheus::IntCounterVec::new(
        Opts::new("meridian_connection_log_stored_total", "Connection records regions shipped, by region and result"),
        &["region", "result"],
    )
    .unwrap_or_else(|e| unreachable!("static metric: {e}"));
    for (region, (new, duplicates)) in super::connections::STORED.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        stored.with_label_values(&[region.as_str(), "stored"]).inc_by(*new);
        stored.with_label_values(&[region.as_str(), "duplicate"]).inc_by(*duplicates);
    }
    let _ = registry.register(Box::new(stored));
    let _ = registry.register(Box::new(regions.clone()));
    for g in [&replicas, &agents, &db_up] {
        let _ = registry.register(Box::new(g.clone()));
    }
    if let (Ok(list), Ok(connected)) = (super::regions::region_list(&state).await, state.store.connected_agents().await)
    {
        db_up.set(1);
        for s in ["ok", "unhealthy", "unreachable", "unregistered"] {
            regions.with_label_values(&[s]).set(list.iter().filter(|r| r.status.as_str() == s).count() as i64);
        }
        replicas.set(list.iter().map(|r| r.replicas.len() as i64).sum());
        agents.set(connected);
    }
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
