//! The proxy's own endpoints, answered without any upstream:
//! `/healthz` (liveness), `/readyz` (readiness: 503 once shutdown has begun),
//! `/healthz-report`, `/latency-check`, `/api/v2/buildinfo`.

use crate::state::ProxyState;
use bytes::Bytes;
use meridian_regions::api::{BuildInfo, ErrorBody};
use meridian_regions::health::HealthReport;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// A response the proxy writes itself.
pub struct Local {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
    /// Extra headers, e.g. CORS for `/latency-check`.
    pub headers: Vec<(&'static str, String)>,
}

impl Local {
    pub fn json(status: u16, value: &impl serde::Serialize) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_default();
        Self { status, content_type: "application/json", body: body.into(), headers: Vec::new() }
    }

    /// A JSON error in the API's `{message, detail}` form.
    pub fn error(status: u16, message: &str) -> Self {
        Self::json(status, &ErrorBody { message: message.to_owned(), detail: String::new() })
    }

    pub async fn write(self, session: &mut Session) -> Result<()> {
        let mut resp = ResponseHeader::build(self.status, Some(4))?;
        resp.insert_header("content-type", self.content_type)?;
        resp.insert_header("content-length", self.body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        for (name, value) in self.headers {
            resp.insert_header(name, value)?;
        }
        let head_only = session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(resp), head_only).await?;
        if !head_only {
            session.write_response_body(Some(self.body), true).await?;
        }
        Ok(())
    }
}

/// The local answer for `path`, if it is one of the proxy's own endpoints.
pub fn answer(path: &str, state: &ProxyState) -> Option<Local> {
    Some(match path {
        "/healthz" => {
            Local { status: 200, content_type: "text/plain", body: Bytes::from_static(b"ok"), headers: Vec::new() }
        }
        "/readyz" if state.draining() => Local {
            status: 503,
            content_type: "text/plain",
            body: Bytes::from_static(b"draining"),
            headers: Vec::new(),
        },
        "/readyz" => {
            Local { status: 200, content_type: "text/plain", body: Bytes::from_static(b"ready"), headers: Vec::new() }
        }
        "/healthz-report" => Local::json(200, &report(state)),
        "/latency-check" => Local {
            status: 200,
            content_type: "text/plain",
            body: Bytes::new(),
            // Only the dashboard may read it and time it (the region picker).
            headers: vec![
                ("access-control-allow-origin", state.dashboard_origin().to_owned()),
                ("timing-allow-origin", state.dashboard_origin().to_owned()),
                ("vary", "Origin".to_owned()),
            ],
        },
        "/metrics" => {
            let text = state.metrics.render(state.in_flight(), state.registration().coordinator_reachable);
            Local { status: 200, content_type: "text/plain; version=0.0.4", body: text.into(), headers: Vec::new() }
        }
        "/api/v2/buildinfo" => {
            Local::json(200, &BuildInfo { version: meridian_regions::VERSION.into(), role: "proxy".into() })
        }
        _ => return None,
    })
}

/// This replica's health report. Losing the coordinator is a warning, not an
/// error: the data plane keeps serving through it.
pub fn report(state: &ProxyState) -> HealthReport {
    let reg = state.registration();
    let mut warnings: Vec<String> = reg.last_error.iter().map(|e| format!("coordinator: {e}")).collect();
    let connection_log = state.connection_log().map(|log| log.report());
    if let Some(log) = connection_log.as_ref().filter(|log| log.dropped > 0) {
        warnings.push(format!(
            "connection log: {} records lost since start (past the disk bound, or unwritable; see the proxy's log)",
            log.dropped
        ));
    }
    HealthReport {
        status: if warnings.is_empty() { "ok" } else { "degraded" }.into(),
        // Nothing yet makes a replica unfit to serve while it can answer this.
        errors: Vec::new(),
        warnings,
        coordinator_reachable: reg.coordinator_reachable,
        last_registration_at: reg.last_success,
        version: meridian_regions::VERSION.into(),
        connection_log,
    }
}
