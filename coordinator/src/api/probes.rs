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
    Json(HealthReport {
        status: if errors.is_empty() { "ok" } else { "degraded" }.into(),
        errors,
        warnings: Vec::new(),
        coordinator_reachable: true,
        last_registration_at: None,
        version: meridian_regions::VERSION.into(),
    })
}

/// `GET /latency-check`: an empty 200 any origin may time.
pub async fn latency_check() -> impl IntoResponse {
    (
        StatusCode::OK,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::HeaderName::from_static("timing-allow-origin"), "*"),
            (header::CACHE_CONTROL, "no-store"),
        ],
    )
}

pub async fn buildinfo() -> Json<BuildInfo> {
    Json(BuildInfo { version: meridian_regions::VERSION.into(), role: "coordinator".into() })
}
