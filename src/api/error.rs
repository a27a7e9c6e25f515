//! `api::Error`: every way a REST request can fail, rendered as the reference's JSON bodies.
//!
//! 400/404/405/409/413/5xx: `{"error": "<message>", "requestId": "<uuid>"}`;
//! 401: `{"message": "Unauthorized"}` with `WWW-Authenticate: Basic`. Server faults are logged
//! once, here, with their request id; their details never reach the client.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::control::ControlError;
use crate::domain::DomainError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

/// The error body of 400, 404, 405, 409, 413 and 5xx responses.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// What went wrong, naming the field or resource at fault.
    pub error: String,
    /// A unique id for this failure, also written to the server log for 5xx.
    pub request_id: String,
}

/// The error body of 401 responses.
#[derive(Debug, Serialize, ToSchema)]
pub struct UnauthorizedBody {
    pub message: String,
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Error::Unauthorized = self {
            let body = UnauthorizedBody {
                message: "Unauthorized".into(),
            };
            return (
                status,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"patchbay\"")],
                Json(body),
            )
                .into_response();
        }
        let request_id = Uuid::new_v4().to_string();
        let message = match &self {
            Error::Internal(detail) | Error::Unavailable(detail) => {
                tracing::error!(%request_id, %status, error = %detail, "request failed");
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    "service temporarily unavailable; retry later".to_owned()
                } else {
                    "internal server error".to_owned()
                }
            }
            other => other.to_string(),
        };
        let body = Json(ErrorBody {
            error: message,
            request_id,
        });
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read: this connection cannot carry another request,
            // and the client must know it before reusing it.
            return (status, [(header::CONNECTION, "close")], body).into_response();
        }
        (status, body).into_response()
    }
}

impl From<DomainError> for Error {
    fn from(e: DomainError) -> Self {
        Error::BadRequest(e.to_string())
    }
}

impl From<ControlError> for Error {
    fn from(e: ControlError) -> Self {
        match e {
            e @ ControlError::NotFound(_) => Error::NotFound(e.to_string()),
            e @ ControlError::Conflict(_) => Error::Conflict(e.to_string()),
            e @ ControlError::Invalid(_) => Error::BadRequest(e.to_string()),
            e @ ControlError::Unavailable { .. } => Error::Unavailable(e.to_string()),
            e @ ControlError::Internal { .. } => Error::Internal(e.to_string()),
        }
    }
}
