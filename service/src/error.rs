//! The errors of the client API and of the Raft listener. Each variant has one HTTP
//! status and one stable `code`; the body is always JSON:
//! `{"error": text, "code": CODE, ...}`. It imports nothing else of this crate; how
//! the node's errors map onto it is the API's business (`api/node_error.rs`), and so
//! is which statuses each route can answer (`api/route_error.rs`).

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{Enum, Object};

/// Stable, machine-readable error codes. Clients branch on these, never on `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidJson,
    EmptyBody,
    EmptyValue,
    InvalidContentType,
    InvalidKey,
    KeyTooLarge,
    ValueTooLarge,
    InvalidParameter,
    KeyNotFound,
    PreconditionFailed,
    LeaseNotFound,
    InvalidTxn,
    InvalidMembership,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    NoLeader,
    StorageUnavailable,
    NoSpace,
    OutcomeUnknown,
    Timeout,
    Unavailable,
    NotReady,
    Overloaded,
    Internal,
}

/// The body of every error response.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct ErrorBody {
    /// What went wrong, for humans.
    pub error: String,
    /// What went wrong, for programs: stable across versions.
    pub code: ErrorCode,
    /// The key the request named, when there is one.
    #[oai(skip_serializing_if_is_none)]
    pub key: Option<String>,
    /// The current leader's node id, when the error is about leadership and one is known.
    #[oai(skip_serializing_if_is_none)]
    pub leader_id: Option<u64>,
    /// With `INVALID_JSON`: what the parser found, and the start of the body it read.
    #[oai(skip_serializing_if_is_none)]
    pub details: Option<InvalidJsonDetails>,
    /// With `PRECONDITION_FAILED`: the key as it was when the write was applied.
    #[oai(skip_serializing_if_is_none)]
    pub current: Option<CurrentRevisions>,
    /// With `LEASE_NOT_FOUND`: the lease the request named.
    #[oai(skip_serializing_if_is_none)]
    pub lease_id: Option<u64>,
}

/// The `current` of a `PRECONDITION_FAILED` answer: the key's revisions when the
/// conditional write was applied (all 0 when it did not exist).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Object)]
pub struct CurrentRevisions {
    pub exists: bool,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

/// The `details` of an `INVALID_JSON` answer (README, "Errors"), so a client can see
/// what it sent.
#[derive(Debug, Clone, PartialEq, Eq, Object)]
pub struct InvalidJsonDetails {
    /// The JSON parser's message, with the line and column where it stopped.
    pub message: String,
    /// The length of the body, in bytes.
    pub body_length: u64,
    /// The first 100 characters of the body (bytes that are not UTF-8 show as U+FFFD).
    pub body_preview: String,
}

/// How much of a bad body `details.body_preview` shows, in characters.
const BODY_PREVIEW_CHARS: usize = 100;

impl InvalidJsonDetails {
    pub fn new(message: impl Into<String>, body: &[u8]) -> Self {
        // 100 characters take at most 400 bytes of UTF-8: decode no more than that.
        let head = &body[..body.len().min(BODY_PREVIEW_CHARS * 4)];
        InvalidJsonDetails {
            message: message.into(),
            body_length: body.len() as u64,
            body_preview: String::from_utf8_lossy(head)
                .chars()
                .take(BODY_PREVIEW_CHARS)
                .collect(),
        }
    }
}

impl Example for ErrorBody {
    fn example() -> Self {
        ErrorBody {
            error: "Key not found".into(),
            code: ErrorCode::KeyNotFound,
            key: Some("user:1".into()),
            leader_id: None,
            details: None,
            current: None,
            lease_id: None,
        }
    }
}

/// Every way a request can fail.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    // The texts of the README's error table, word for word: clients may show them.
    #[error("Invalid JSON format")]
    InvalidJson(InvalidJsonDetails),
    #[error("Request body is required")]
    EmptyBody,
    #[error("Value is required and cannot be empty")]
    EmptyValue,
    /// A body whose `Content-Type` is given and is not JSON (the type is kept for logs).
    #[error("Content-Type must be application/json")]
    InvalidContentType(String),
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("key is {len} bytes; the limit is {max} bytes")]
    KeyTooLarge { len: usize, max: usize },
    #[error("{0}")]
    ValueTooLarge(String),
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    #[error("Key not found")]
    KeyNotFound(String),
    #[error("the condition on the key did not hold; nothing was changed")]
    PreconditionFailed {
        key: String,
        current: CurrentRevisions,
    },
    #[error("lease {0} not found: it expired, was revoked, or never existed")]
    LeaseNotFound(u64),
    #[error("invalid transaction: {0}")]
    InvalidTxn(String),
    #[error("invalid membership change: {0}")]
    InvalidMembership(String),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// No bearer token where `auth.tokens` asks for one.
    #[error("unauthorized: {0}")]
    MissingToken(String),
    /// A malformed `Authorization` header or an unknown token.
    #[error("unauthorized: {0}")]
    InvalidToken(String),
    /// A known token whose role does not allow the route.
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method not allowed for {0}")]
    MethodNotAllowed(String),
    #[error("{message}")]
    NoLeader {
        message: String,
        leader: Option<u64>,
    },
    #[error("{0}")]
    StorageUnavailable(String),
    #[error("{0}")]
    NoSpace(String),
    #[error("{0}")]
    OutcomeUnknown(String),
    #[error("{0}")]
    Timeout(String),
    #[error("request body was not received within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("{0}")]
    Unavailable(String),
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("overloaded: {0}; nothing was done, retry shortly")]
    Overloaded(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_)
            | ApiError::EmptyBody
            | ApiError::EmptyValue
            | ApiError::InvalidContentType(_)
            | ApiError::InvalidKey(_)
            | ApiError::KeyTooLarge { .. }
            | ApiError::InvalidMembership(_)
            | ApiError::InvalidTxn(_)
            | ApiError::InvalidParameter(_) => StatusCode::BAD_REQUEST,
            ApiError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            ApiError::Unauthorized(_) | ApiError::MissingToken(_) | ApiError::InvalidToken(_) => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::ValueTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::KeyNotFound(_) | ApiError::NotFound(_) | ApiError::LeaseNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NoLeader { .. }
            | ApiError::OutcomeUnknown(_)
            | ApiError::StorageUnavailable(_)
            | ApiError::Unavailable(_)
            | ApiError::NotReady(_)
            | ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::InvalidJson(_) => ErrorCode::InvalidJson,
            ApiError::EmptyBody => ErrorCode::EmptyBody,
            ApiError::EmptyValue => ErrorCode::EmptyValue,
            ApiError::InvalidContentType(_) => ErrorCode::InvalidContentType,
            ApiError::InvalidKey(_) => ErrorCode::InvalidKey,
            ApiError::KeyTooLarge { .. } => ErrorCode::KeyTooLarge,
            ApiError::ValueTooLarge(_) => ErrorCode::ValueTooLarge,
            ApiError::InvalidParameter(_) => ErrorCode::InvalidParameter,
            ApiError::KeyNotFound(_) => ErrorCode::KeyNotFound,
            ApiError::PreconditionFailed { .. } => ErrorCode::PreconditionFailed,
            ApiError::LeaseNotFound(_) => ErrorCode::LeaseNotFound,
            ApiError::InvalidTxn(_) => ErrorCode::InvalidTxn,
            ApiError::InvalidMembership(_) => ErrorCode::InvalidMembership,
            ApiError::Unauthorized(_) | ApiError::MissingToken(_) | ApiError::InvalidToken(_) => {
                ErrorCode::Unauthorized
            }
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            ApiError::NoLeader { .. } => ErrorCode::NoLeader,
            ApiError::OutcomeUnknown(_) => ErrorCode::OutcomeUnknown,
            ApiError::StorageUnavailable(_) => ErrorCode::StorageUnavailable,
            ApiError::NoSpace(_) => ErrorCode::NoSpace,
            ApiError::Timeout(_) | ApiError::BodyTimeout(_) => ErrorCode::Timeout,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::NotReady(_) => ErrorCode::NotReady,
            ApiError::Overloaded(_) => ErrorCode::Overloaded,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn body(&self) -> ErrorBody {
        let text = self.to_string();
        let error = if reveals_internals(&text) {
            // The detail helps an operator, not a client: it goes to the log, under the
            // request's span (and trace id), and the client gets a sentence.
            tracing::warn!(code = %self.code().as_label(), detail = %text, "error detail withheld from the client");
            self.code().sentence().to_string()
        } else {
            text
        };
        ErrorBody {
            error,
            code: self.code(),
            key: match self {
                ApiError::KeyNotFound(key) | ApiError::PreconditionFailed { key, .. } => {
                    Some(key.clone())
                }
                _ => None,
            },
            leader_id: match self {
                ApiError::NoLeader { leader, .. } => *leader,
                _ => None,
            },
            details: match self {
                ApiError::InvalidJson(details) => Some(details.clone()),
                _ => None,
            },
            current: match self {
                ApiError::PreconditionFailed { current, .. } => Some(*current),
                _ => None,
            },
            lease_id: match self {
                ApiError::LeaseNotFound(id) => Some(*id),
                _ => None,
            },
        }
    }

    /// The `WWW-Authenticate` challenge of a bearer-token refusal (RFC 6750, section 3).
    fn bearer_challenge(&self) -> Option<&'static str> {
        match self {
            ApiError::MissingToken(_) => Some(r#"Bearer realm="kvstore""#),
            ApiError::InvalidToken(_) => Some(r#"Bearer realm="kvstore", error="invalid_token""#),
            ApiError::Forbidden(_) => Some(r#"Bearer realm="kvstore", error="insufficient_scope""#),
            _ => None,
        }
    }

    /// Turns any error poem or poem-openapi raised before a handler ran (no route, wrong
    /// method, unparsable parameter, ...) into the JSON shape of every other error.
    pub fn from_poem(err: &poem::Error, method: &str, path: &str) -> ApiError {
        if let Some(api) = err.downcast_ref::<ApiError>() {
            return api.clone();
        }
        let target = format!("{method} {path}");
        match err.status() {
            StatusCode::NOT_FOUND => ApiError::NotFound(target),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed(target),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::ValueTooLarge(err.to_string()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::InvalidContentType(err.to_string()),
            s if s.is_client_error() => ApiError::InvalidParameter(err.to_string()),
            _ => ApiError::Internal(err.to_string()),
        }
    }
}

impl poem::error::ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        ApiError::status(self)
    }

    fn as_response(&self) -> Response {
        self.clone().into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry = matches!(self, ApiError::Overloaded(_));
        let challenge = self.bearer_challenge();
        let mut response = Json(self.body()).with_status(status).into_response();
        if retry {
            response
                .headers_mut()
                .insert(poem::http::header::RETRY_AFTER, RETRY_AFTER_SECS.into());
        }
        if let Some(challenge) = challenge {
            response.headers_mut().insert(
                poem::http::header::WWW_AUTHENTICATE,
                poem::http::HeaderValue::from_static(challenge),
            );
        }
        // For the error metrics: which code this response carries.
        response.set_data(self.code());
        response
    }
}

/// Fragments of Rust's debug formatting and type paths, which an error from a library
/// (openraft, std::io, sqlx) carries and a client must never see.
const INTERNALS: &[&str] = &[
    "LogId {",
    "LeaderId {",
    "Vote {",
    "Error {",
    "Error(",
    "Some(",
    "Os {",
    "std::",
    "kind:",
];

/// Whether `text` shows Rust internals rather than a sentence meant for a client.
pub fn reveals_internals(text: &str) -> bool {
    INTERNALS.iter().any(|fragment| text.contains(fragment))
}

impl ErrorCode {
    /// What a client is told when the error's own text would reveal internals.
    fn sentence(self) -> &'static str {
        match self {
            ErrorCode::Unavailable => {
                "this node cannot serve the request right now; retry, or try another node"
            }
            ErrorCode::OutcomeUnknown => {
                "the write may or may not have taken effect: leadership changed, or the \
                 leader stopped answering, before it was known to commit"
            }
            ErrorCode::StorageUnavailable => "the storage backend is unreachable",
            ErrorCode::NoLeader => "no leader is available to serve this request",
            ErrorCode::Timeout => "the request did not complete in time",
            ErrorCode::InvalidMembership => "the membership change cannot be made",
            _ => "the request failed on this node; the node's log has the details",
        }
    }

    /// The code as clients see it, e.g. `KEY_NOT_FOUND`.
    pub fn as_label(self) -> String {
        match poem_openapi::types::ToJSON::to_json(&self) {
            Some(serde_json::Value::String(code)) => code,
            _ => format!("{self:?}"),
        }
    }
}

/// What an `OVERLOADED` answer asks the client to wait, in seconds.
const RETRY_AFTER_SECS: u16 = 1;

/// Used by the outermost error layer of the client API (`api::app`) and of the Raft
/// listener: everything the router or an extractor rejects becomes the same JSON error
/// shape as the handlers' own errors.
pub fn to_json_response(err: poem::Error, method: &str, path: &str) -> Response {
    let api = ApiError::from_poem(&err, method, path);
    let mut response = api.into_response();
    if let Some(op) = err.data::<poem_openapi::OperationId>() {
        response.set_data(*op);
    }
    response
}

#[cfg(test)]
mod tests {
    use poem_openapi::types::ToJSON;

    use super::*;

    #[test]
    fn error_codes_serialise_in_screaming_snake_case() {
        assert_eq!(ErrorCode::KeyNotFound.to_json().unwrap(), "KEY_NOT_FOUND");
        assert_eq!(
            ErrorCode::InvalidContentType.to_json().unwrap(),
            "INVALID_CONTENT_TYPE"
        );
    }

    #[test]
    fn key_not_found_matches_the_documented_shape() {
        let body = ApiError::KeyNotFound("user:1".into()).body();
        let json = body.to_json().unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": "Key not found", "code": "KEY_NOT_FOUND", "key": "user:1"})
        );
    }

    #[test]
    fn body_preview_is_the_first_hundred_characters() {
        let body = "é".repeat(150);
        let details = InvalidJsonDetails::new("m", body.as_bytes());
        assert_eq!(details.body_length, 300);
        assert_eq!(details.body_preview, "é".repeat(100));
        let short = InvalidJsonDetails::new("m", b"{\"value\": \xff");
        assert_eq!(short.body_length, 11);
        assert_eq!(short.body_preview, "{\"value\": \u{fffd}");
    }

    #[test]
    fn every_variant_keeps_its_code_and_status_through_poem() {
        let errors = [
            ApiError::EmptyBody,
            ApiError::InvalidJson(InvalidJsonDetails::new("x", b"{")),
            ApiError::KeyTooLarge { len: 2, max: 1 },
            ApiError::NoLeader {
                message: "m".into(),
                leader: Some(3),
            },
            ApiError::Timeout("t".into()),
        ];
        for e in errors {
            let (code, status) = (e.code(), e.status());
            let poem_err = poem::Error::from(e);
            let back = ApiError::from_poem(&poem_err, "GET", "/");
            assert_eq!((back.code(), back.status()), (code, status));
        }
    }
}
