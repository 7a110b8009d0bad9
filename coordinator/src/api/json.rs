//! A JSON body extractor that answers bad bodies with the API's `{message,
//! detail}`: 413 for a body over [`MAX_BODY`], 400 for anything else wrong.

use crate::error::ApiError;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

/// The largest request body the API reads. The largest legitimate one, a
/// workspace with many agents and apps, is a few KiB.
pub const MAX_BODY: usize = 256 * 1024;

pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::Json::<T>::from_request(req, state).await.map(|axum::Json(v)| Json(v)).map_err(|e| match e.status() {
            axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge(format!("The request body is over the limit of {} KiB.", MAX_BODY / 1024))
            }
            _ => ApiError::BadRequest(format!("Invalid request body: {}", e.body_text())),
        })
    }
}
