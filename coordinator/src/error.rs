//! API errors and the one place they become HTTP statuses.
//!
//! Each variant is a distinct cause with its own status. Database failures
//! that mean "Postgres is not answering" become 503 so that clients retry;
//! everything unexpected is a 500 whose detail is logged, not sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use meridian_regions::api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or a field is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// No credential, or one that is unknown, expired or revoked.
    #[error("{0}")]
    Unauthorized(String),
    /// Signed in, but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The thing exists already (duplicate name) or the state forbids it.
    #[error("{0}")]
    Conflict(String),
    /// The body is over the API's size limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request names a host this coordinator does not answer for.
    #[error("{0}")]
    Misdirected(String),
    /// A limit on the caller (e.g. failed sign-ins) holds for `retry_after`.
    #[error("{0}")]
    TooManyRequests(String, std::time::Duration),
    /// The coordinator is too busy for this now (e.g. password checks queued); retry in a second.
    #[error("{0}")]
    Busy(String),
    /// Postgres is down or unreachable; safe to retry.
    #[error("database unavailable")]
    DatabaseUnavailable(#[source] sqlx::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
    /// One error answered to every caller of a shared read ([`crate::read_cache`]).
    #[error(transparent)]
    Shared(std::sync::Arc<ApiError>),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            ApiError::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::DatabaseUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Shared(e) => e.status(),
        }
    }

    fn body(&self) -> ErrorBody {
        let (message, detail) = match self {
            ApiError::DatabaseUnavailable(e) => {
                ("The coordinator's database is unavailable; try again shortly.".to_owned(), e.to_string())
            }
            ApiError::Internal(_) => ("Internal error.".to_owned(), String::new()),
            ApiError::Shared(e) => return e.body(),
            other => (other.to_string(), String::new()),
        };
        ErrorBody { message, detail }
    }
}

/// Whether a database error means Postgres itself is out of reach (as opposed
/// to a query being wrong): pool timeouts, I/O and protocol-level failures,
/// and the server shutting down (SQLSTATE class 57, e.g. `admin_shutdown`).
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("57") || c.starts_with("08")),
        _ => false,
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            ApiError::DatabaseUnavailable(e)
        } else {
            ApiError::Internal(e.into())
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::Internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(e) => tracing::error!(error = %format!("{e:#}"), "internal error"),
            ApiError::DatabaseUnavailable(e) => tracing::warn!(error = %e, "database unavailable"),
            _ => {}
        }
        let retry_after = match &self {
            ApiError::TooManyRequests(_, after) => Some(after.as_secs().max(1)),
            ApiError::Busy(_) => Some(1),
            _ => None,
        };
        let mut resp = (self.status(), Json(self.body())).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
