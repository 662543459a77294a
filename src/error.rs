//! The one error type. Every failure a request can meet ends here, and one `match` in
//! [`Error::into_response`] turns it into the Matrix error body with the spec's status
//! (client-server API, "Standard error response").

use std::{sync::OnceLock, time::Duration};

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use ruma::api::{
    OutgoingResponse,
    client::uiaa::{UiaaInfo, UiaaResponse},
    error::{
        Error as RumaError, ErrorBody, ErrorKind, LimitExceededErrorData,
        ResourceLimitExceededErrorData, RetryAfter, StandardErrorBody, UnknownTokenErrorData,
    },
};

use crate::storage::StorageError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `admin_contact` of `M_RESOURCE_LIMIT_EXCEEDED` (the config key, or
/// `https://<server_name>`), set once when the services are built.
static ADMIN_CONTACT: OnceLock<String> = OnceLock::new();

/// Sets the admin contact sent with a full disk's error; the first call wins (one server
/// per process).
pub fn set_admin_contact(contact: String) {
    let _ = ADMIN_CONTACT.set(contact);
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Matrix error: an `errcode`, a message for humans, and the HTTP status.
    #[error("{kind:?}: {message}")]
    Matrix {
        status: StatusCode,
        kind: ErrorKind,
        message: String,
    },
    /// User-interactive authentication is (still) required: 401 with the flows.
    #[error("user-interactive authentication required")]
    Uiaa(Box<UiaaInfo>),
    /// The store failed. Logged in full, answered as `M_UNKNOWN`; a full disk
    /// ([`StorageError::NoSpace`]) is answered as `507 M_RESOURCE_LIMIT_EXCEEDED` and not
    /// logged per request (storage logs it once).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A bug or an unexpected failure. Logged in full, answered as `M_UNKNOWN`.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// An error of `kind` with the status the spec gives that errcode.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let status = default_status(&kind);
        Self::Matrix {
            status,
            kind,
            message: message.into(),
        }
    }

    pub fn with_status(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Matrix {
            status,
            kind,
            message: message.into(),
        }
    }

    /// 400 with `kind`, for errcodes whose usual status is another (e.g. `M_UNKNOWN`).
    pub fn bad_request(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::with_status(StatusCode::BAD_REQUEST, kind, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, message)
    }

    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadJson, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidParam, message)
    }

    pub fn unknown_token(message: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::UnknownToken(UnknownTokenErrorData::new()),
            message,
        )
    }

    pub fn limit_exceeded(retry_after: Duration) -> Self {
        let mut data = LimitExceededErrorData::new();
        data.retry_after = Some(RetryAfter::Delay(retry_after));
        Self::new(
            ErrorKind::LimitExceeded(data),
            "Too many attempts; try again later",
        )
    }

    /// An errcode the spec defines but ruma has no variant for (e.g. `M_PROFILE_TOO_LARGE`),
    /// answered with 400.
    pub fn custom(errcode: &str, message: impl Into<String>) -> Self {
        let kind: ErrorKind = serde_json::from_value(serde_json::json!({ "errcode": errcode }))
            .expect("any errcode string deserialises into ErrorKind");
        Self::with_status(StatusCode::BAD_REQUEST, kind, message)
    }

    /// A request needed another server and could not find or reach it: `502 M_UNKNOWN`, as
    /// Synapse answers, with a message naming the server.
    pub fn remote_unreachable(server: &ruma::ServerName, reason: impl std::fmt::Display) -> Self {
        Self::with_status(
            StatusCode::BAD_GATEWAY,
            ErrorKind::Unknown,
            format!("Could not reach {server}: {reason}"),
        )
    }

    /// Another server answered, but not with something usable (a bad join template, an
    /// event that does not verify): `502`, as for an unreachable one.
    pub fn remote(message: impl Into<String>) -> Self {
        Self::with_status(StatusCode::BAD_GATEWAY, ErrorKind::Unknown, message.into())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }

    /// The errcode and status this error is answered with (for logs and tests).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Matrix { status, .. } => *status,
            Self::Uiaa(_) => StatusCode::UNAUTHORIZED,
            Self::Storage(StorageError::NoSpace) => StatusCode::INSUFFICIENT_STORAGE,
            Self::Storage(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn into_ruma(self) -> UiaaResponse {
        let (status, kind, message) = match self {
            Self::Uiaa(mut info) => {
                // The spec's examples always carry `params`, and some clients (matrix-nio)
                // read it unconditionally: an empty object when no stage has parameters.
                if info.params.is_none() {
                    info.params = Some(
                        serde_json::value::to_raw_value(&serde_json::json!({}))
                            .expect("an empty object serialises"),
                    );
                }
                return UiaaResponse::AuthResponse(*info);
            }
            Self::Matrix {
                status,
                kind,
                message,
            } => (status, kind, message),
            // The spec's errcode for "a resource limit … e.g. memory or disk space", which
            // must carry `admin_contact`; 507 says the condition is the server's and
            // transient, so clients may retry.
            Self::Storage(StorageError::NoSpace) => (
                StatusCode::INSUFFICIENT_STORAGE,
                ErrorKind::ResourceLimitExceeded(ResourceLimitExceededErrorData::new(
                    ADMIN_CONTACT
                        .get()
                        .cloned()
                        .unwrap_or_else(|| "https://localhost".into()),
                )),
                "The server's disk is full; try again later".into(),
            ),
            Self::Storage(error) => {
                tracing::error!(%error, "storage failure while handling a request");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorKind::Unknown,
                    "Internal server error".into(),
                )
            }
            Self::Internal(error) => {
                tracing::error!(%error, "internal error while handling a request");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorKind::Unknown,
                    "Internal server error".into(),
                )
            }
        };
        UiaaResponse::MatrixError(RumaError::new(
            status,
            ErrorBody::Standard(StandardErrorBody::new(kind, message)),
        ))
    }
}

/// The status each errcode is answered with where the spec does not say otherwise
/// (client-server API, "Common error codes").
fn default_status(kind: &ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Forbidden
        | ErrorKind::UserDeactivated
        | ErrorKind::GuestAccessForbidden
        | ErrorKind::ThreepidDenied => StatusCode::FORBIDDEN,
        ErrorKind::MissingToken | ErrorKind::UnknownToken(_) | ErrorKind::Unauthorized => {
            StatusCode::UNAUTHORIZED
        }
        ErrorKind::NotFound | ErrorKind::Unrecognized => StatusCode::NOT_FOUND,
        ErrorKind::LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self.into_ruma().try_into_http_response::<Vec<u8>>() {
            Ok(response) => response.map(axum::body::Body::from).into_response(),
            Err(error) => {
                tracing::error!(%error, "could not serialise an error response");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(error: Error) -> (StatusCode, serde_json::Value, http::HeaderMap) {
        let response = error.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap(), headers)
    }

    #[tokio::test]
    async fn matrix_error_has_errcode_and_status() {
        let (status, body, _) = body_of(Error::forbidden("no")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["errcode"], "M_FORBIDDEN");
        assert_eq!(body["error"], "no");
    }

    #[tokio::test]
    async fn limit_exceeded_carries_retry_after() {
        let (status, body, headers) = body_of(Error::limit_exceeded(Duration::from_secs(3))).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
        assert_eq!(body["retry_after_ms"], 3000);
        assert_eq!(headers.get(http::header::RETRY_AFTER).unwrap(), "3");
    }

    #[tokio::test]
    async fn custom_errcode_is_kept() {
        let (status, body, _) = body_of(Error::custom("M_PROFILE_TOO_LARGE", "big")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["errcode"], "M_PROFILE_TOO_LARGE");
    }

    #[tokio::test]
    async fn unreachable_server_is_502_naming_the_server() {
        let server = ruma::server_name!("example.org");
        let (status, body, _) = body_of(Error::remote_unreachable(server, "no address")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(body["errcode"], "M_UNKNOWN");
        assert_eq!(body["error"], "Could not reach example.org: no address");
    }

    #[tokio::test]
    async fn full_disk_is_507_resource_limit_with_admin_contact() {
        // The first call wins, and other tests of this process build services (which set
        // it too): expect whichever was set.
        set_admin_contact("mailto:admin@example.org".into());
        let contact = ADMIN_CONTACT.get().unwrap().clone();
        let error = Error::Storage(StorageError::NoSpace);
        assert_eq!(error.status(), StatusCode::INSUFFICIENT_STORAGE);
        let (status, body, _) = body_of(error).await;
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(body["errcode"], "M_RESOURCE_LIMIT_EXCEEDED");
        assert_eq!(body["admin_contact"], contact.as_str());
        // Other storage failures stay 500 M_UNKNOWN.
        let (status, body, _) = body_of(Error::Storage(StorageError::Backend("x".into()))).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["errcode"], "M_UNKNOWN");
    }

    #[tokio::test]
    async fn internal_errors_hide_details() {
        let (status, body, _) = body_of(Error::internal("secret detail")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["errcode"], "M_UNKNOWN");
        assert!(!body.to_string().contains("secret detail"));
    }

    #[tokio::test]
    async fn uiaa_answer_always_has_params_and_session() {
        let mut info = UiaaInfo::new(vec![ruma::api::client::uiaa::AuthFlow::new(vec![
            ruma::api::client::uiaa::AuthType::Password,
        ])]);
        info.session = Some("abc".into());
        let (status, body, _) = body_of(Error::Uiaa(Box::new(info))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["flows"][0]["stages"][0], "m.login.password");
        assert_eq!(body["params"], serde_json::json!({}));
        assert_eq!(body["session"], "abc");
    }

    #[tokio::test]
    async fn unknown_token_is_401_and_not_soft_logout() {
        let (status, body, _) = body_of(Error::unknown_token("gone")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
        assert_ne!(body["soft_logout"], true);
    }
}
