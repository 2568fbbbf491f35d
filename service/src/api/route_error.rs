//! Which errors each route can answer, as its OpenAPI operation shows them. Every error
//! is an [`ApiError`] with the one JSON body and stable `code`; what differs by route is
//! the set of statuses it can reach, so the spec of `/ready` shows 503 `NOT_READY` and
//! not the 413 of a body it never reads. The statuses listed include those the layers
//! in front of the routes answer (authentication, load shedding; see `middleware.rs`).

use std::marker::PhantomData;

use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::ApiResponse;

use super::error::{ApiError, ErrorBody};
use crate::raft::NodeError;

/// The statuses one route (or group of routes) can answer with, each with what it
/// means there.
pub trait Statuses: Send + Sync + 'static {
    const RESPONSES: &'static [(u16, &'static str)];
}

/// An error of a route whose possible statuses are `S`. In debug builds, an error with
/// a status `S` does not list panics, so a test that reaches it shows the spec is wrong.
pub struct RouteError<S> {
    error: ApiError,
    statuses: PhantomData<fn() -> S>,
}

impl<S: Statuses> From<ApiError> for RouteError<S> {
    fn from(error: ApiError) -> Self {
        let status = error.status().as_u16();
        debug_assert!(
            S::RESPONSES.iter().any(|(listed, _)| *listed == status),
            "{status} ({:?}) is not among the statuses this route documents",
            error.code()
        );
        RouteError {
            error,
            statuses: PhantomData,
        }
    }
}

impl<S: Statuses> From<NodeError> for RouteError<S> {
    fn from(e: NodeError) -> Self {
        ApiError::from(e).into()
    }
}

impl<S> From<RouteError<S>> for poem::Error {
    fn from(e: RouteError<S>) -> Self {
        // The outermost layer turns it into its JSON answer, as any other ApiError.
        poem::Error::from(e.error)
    }
}

impl<S: Statuses> ApiResponse for RouteError<S> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: S::RESPONSES
                .iter()
                .map(|(status, description)| MetaResponse {
                    description,
                    status: Some(*status),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: "application/json; charset=utf-8",
                        schema: ErrorBody::schema_ref(),
                    }],
                    headers: vec![],
                })
                .collect(),
        }
    }

    fn register(registry: &mut Registry) {
        ErrorBody::register(registry);
    }
}

const UNAUTHORIZED: (u16, &str) = (
    401,
    "UNAUTHORIZED: no valid bearer token (`Authorization: Bearer <token>`) while \
     `auth.tokens` is set",
);
const UNAUTHORIZED_CLUSTER: (u16, &str) = (
    401,
    "UNAUTHORIZED: no valid bearer token (`Authorization: Bearer <token>`) while \
     `auth.tokens` is set, or not the right `x-kvstore-secret` header while \
     `cluster.secret` is set",
);
const FORBIDDEN: (u16, &str) = (
    403,
    "FORBIDDEN: the bearer token's role does not allow this route (read < write < admin)",
);
const BODY_TIMEOUT: (u16, &str) = (
    408,
    "TIMEOUT: the request body did not arrive within server.request_timeout",
);
const BODY_TOO_LARGE: (u16, &str) = (
    413,
    "VALUE_TOO_LARGE: the request body exceeds the configured limit",
);
const PRECONDITION_FAILED: (u16, &str) = (
    412,
    "PRECONDITION_FAILED: the `If-Match` / `If-None-Match` condition did not hold when \
     the write was applied; nothing changed; `current` has the key's revisions",
);
const INTERNAL: (u16, &str) = (500, "INTERNAL: an unexpected failure on this node");
const DELETE_UNAVAILABLE: (u16, &str) = (
    503,
    "NO_LEADER, UNAVAILABLE, STORAGE_UNAVAILABLE, OUTCOME_UNKNOWN (the delete may or may \
     not have been applied), or OVERLOADED (too many requests in flight; retry after the \
     `Retry-After` seconds)",
);
const READ_UNAVAILABLE: (u16, &str) = (
    503,
    "NO_LEADER, UNAVAILABLE or STORAGE_UNAVAILABLE: the read cannot be served here now; \
     or OVERLOADED (too many requests in flight; retry after the `Retry-After` seconds)",
);
const TIMEOUT: (u16, &str) = (
    504,
    "TIMEOUT: the request did not complete within server.request_timeout",
);
const WRITE_UNAVAILABLE: (u16, &str) = (
    503,
    "NO_LEADER, UNAVAILABLE, STORAGE_UNAVAILABLE, OUTCOME_UNKNOWN (the write may or may \
     not have been applied), or OVERLOADED (too many requests, or too many bytes of \
     writes, in flight; nothing was done, retry after the `Retry-After` seconds)",
);
const NO_SPACE: (u16, &str) = (
    507,
    "NO_SPACE: the node is past storage.quota_bytes or below storage.min_free_bytes \
     free; new values are refused until there is room, reads and deletes still work",
);
const WRITE_TIMEOUT: (u16, &str) = (
    504,
    "TIMEOUT: the request did not complete within server.request_timeout; the write's \
     outcome is unknown",
);

/// `GET /kv/{key}`.
pub enum KvGet {}

impl Statuses for KvGet {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        (
            400,
            "Bad request: INVALID_KEY, KEY_TOO_LARGE, or INVALID_PARAMETER (an unknown \
             `consistency`)",
        ),
        UNAUTHORIZED,
        FORBIDDEN,
        (404, "KEY_NOT_FOUND: the key does not exist"),
        INTERNAL,
        READ_UNAVAILABLE,
        TIMEOUT,
    ];
}

/// `PUT /kv/{key}`.
pub enum KvPut {}

impl Statuses for KvPut {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        (
            400,
            "Bad request: INVALID_JSON (with `details`), EMPTY_BODY, EMPTY_VALUE, \
             INVALID_CONTENT_TYPE (a body that is not application/json), INVALID_KEY, \
             KEY_TOO_LARGE, or INVALID_PARAMETER (a malformed `If-Match` or \
             `If-None-Match`, `lease` with `ttl_seconds`, a `ttl_seconds` out of range)",
        ),
        UNAUTHORIZED,
        FORBIDDEN,
        (
            404,
            "LEASE_NOT_FOUND: the `lease` named does not exist (expired or revoked); \
             nothing was written",
        ),
        BODY_TIMEOUT,
        PRECONDITION_FAILED,
        (
            413,
            "VALUE_TOO_LARGE: the value or the request body exceeds the configured limit",
        ),
        INTERNAL,
        WRITE_UNAVAILABLE,
        WRITE_TIMEOUT,
        NO_SPACE,
    ];
}

/// `DELETE /kv/{key}`.
pub enum KvDelete {}

impl Statuses for KvDelete {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        (
            400,
            "Bad request: INVALID_KEY, KEY_TOO_LARGE, or INVALID_PARAMETER (a malformed \
             `If-Match`)",
        ),
        UNAUTHORIZED,
        FORBIDDEN,
        (404, "KEY_NOT_FOUND: the key did not exist"),
        PRECONDITION_FAILED,
        INTERNAL,
        DELETE_UNAVAILABLE,
        WRITE_TIMEOUT,
    ];
}

/// `GET /kv`: the ordered listing.
pub enum KvList {}

impl Statuses for KvList {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        (
            400,
            "INVALID_PARAMETER: `limit` outside 1 to 10000 or not a number, `prefix` with \
             `start` or `end`, `after` with `count_only`, `keys_only` with `count_only`, \
             or an unknown `consistency`",
        ),
        UNAUTHORIZED,
        FORBIDDEN,
        INTERNAL,
        READ_UNAVAILABLE,
        TIMEOUT,
    ];
}

/// `DELETE /kv`: the range delete.
pub enum KvDeleteRange {}

impl Statuses for KvDeleteRange {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        (
            400,
            "INVALID_PARAMETER: neither a non-empty `prefix` nor a `start` (so that a \
             request without bounds never deletes every key), or `prefix` with `start` \
             or `end`",
        ),
        UNAUTHORIZED,
        FORBIDDEN,
        INTERNAL,
        DELETE_UNAVAILABLE,
        WRITE_TIMEOUT,
    ];
}

/// `POST /txn`.
pub enum Txn {}

impl Statuses for Txn {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        (
            400,
            "Bad request: INVALID_JSON (with `details`), EMPTY_BODY, INVALID_CONTENT_TYPE, \
             EMPTY_VALUE, INVALID_KEY, KEY_TOO_LARGE, INVALID_PARAMETER (a range's \
             bounds), or INVALID_TXN (too many comparisons or operations, an operation \
             without exactly one kind, a comparison value of the wrong type, a key \
             written twice, a range over a key the branch writes)",
        ),
        UNAUTHORIZED,
        FORBIDDEN,
        (
            404,
            "LEASE_NOT_FOUND: a put of the branch that ran names a lease that does not \
             exist; nothing was written",
        ),
        BODY_TIMEOUT,
        (
            413,
            "VALUE_TOO_LARGE: a value or the request body exceeds the configured limit",
        ),
        INTERNAL,
        WRITE_UNAVAILABLE,
        WRITE_TIMEOUT,
        NO_SPACE,
    ];
}

/// `POST /leases`.
pub enum LeaseGrant {}

impl Statuses for LeaseGrant {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        (
            400,
            "Bad request: INVALID_JSON (with `details`), EMPTY_BODY, INVALID_CONTENT_TYPE, \
             or INVALID_PARAMETER (`ttl_seconds` outside 1 to 31536000)",
        ),
        UNAUTHORIZED,
        FORBIDDEN,
        BODY_TIMEOUT,
        BODY_TOO_LARGE,
        INTERNAL,
        WRITE_UNAVAILABLE,
        WRITE_TIMEOUT,
        NO_SPACE,
    ];
}

/// `POST /leases/{id}/keepalive` and `DELETE /leases/{id}`.
pub enum LeaseChange {}

impl Statuses for LeaseChange {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        (400, "INVALID_PARAMETER: an id that is not a number"),
        UNAUTHORIZED,
        FORBIDDEN,
        (
            404,
            "LEASE_NOT_FOUND: no such lease (it expired, was revoked, or never existed)",
        ),
        INTERNAL,
        WRITE_UNAVAILABLE,
        WRITE_TIMEOUT,
        NO_SPACE,
    ];
}

/// `GET /leases/{id}`.
pub enum LeaseGet {}

impl Statuses for LeaseGet {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        (
            400,
            "INVALID_PARAMETER: an id that is not a number, or an unknown `consistency`",
        ),
        UNAUTHORIZED,
        FORBIDDEN,
        (
            404,
            "LEASE_NOT_FOUND: no such lease (it expired, was revoked, or never existed)",
        ),
        INTERNAL,
        READ_UNAVAILABLE,
        TIMEOUT,
    ];
}

/// `GET /ready`: open to every client and never shed, it answers only why it is not
/// ready.
pub enum Ready {}

impl Statuses for Ready {
    const RESPONSES: &'static [(u16, &'static str)] = &[(
        503,
        "NOT_READY: no leader in touch, applying behind, storage unreachable, the disk \
         full, or Raft stopped; `error` says which",
    )];
}

/// `GET /status`.
pub enum Status {}

impl Statuses for Status {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        UNAUTHORIZED,
        FORBIDDEN,
        INTERNAL,
        (
            503,
            "STORAGE_UNAVAILABLE: the key count cannot be read; or OVERLOADED (too many \
             requests in flight; retry after the `Retry-After` seconds)",
        ),
    ];
}

/// `GET /cluster/members`.
pub enum ClusterList {}

impl Statuses for ClusterList {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        UNAUTHORIZED_CLUSTER,
        FORBIDDEN,
        (
            503,
            "OVERLOADED: too many requests in flight; retry after the `Retry-After` seconds",
        ),
    ];
}

/// The membership changes with a JSON body: add a learner, promote, transfer leadership.
pub enum ClusterChange {}

impl Statuses for ClusterChange {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        (
            400,
            "Bad request: INVALID_JSON (with `details`), EMPTY_BODY, INVALID_CONTENT_TYPE, \
             or INVALID_MEMBERSHIP (a change that cannot be made)",
        ),
        UNAUTHORIZED_CLUSTER,
        FORBIDDEN,
        BODY_TIMEOUT,
        BODY_TOO_LARGE,
        INTERNAL,
        (
            503,
            "NO_LEADER, UNAVAILABLE, STORAGE_UNAVAILABLE, OUTCOME_UNKNOWN (the change may \
             or may not have been made), or OVERLOADED (too many requests in flight)",
        ),
        WRITE_TIMEOUT,
    ];
}

/// `DELETE /cluster/members/{id}`.
pub enum ClusterRemove {}

impl Statuses for ClusterRemove {
    const RESPONSES: &'static [(u16, &'static str)] = &[
        (
            400,
            "Bad request: INVALID_PARAMETER (an id that is not a number) or \
             INVALID_MEMBERSHIP (not a member, or the last voter)",
        ),
        UNAUTHORIZED_CLUSTER,
        FORBIDDEN,
        INTERNAL,
        (
            503,
            "NO_LEADER, UNAVAILABLE, STORAGE_UNAVAILABLE, OUTCOME_UNKNOWN (the removal may \
             or may not have been made), or OVERLOADED (too many requests in flight)",
        ),
        WRITE_TIMEOUT,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn an_error_keeps_its_code_status_and_body_through_poem() {
        let e = RouteError::<KvGet>::from(ApiError::KeyNotFound("user:1".into()));
        let back = ApiError::from_poem(&poem::Error::from(e), "GET", "/kv/user:1");
        assert_eq!(
            (back.code(), back.status().as_u16()),
            (ErrorCode::KeyNotFound, 404)
        );
        assert_eq!(back.body().key.as_deref(), Some("user:1"));
    }

    #[test]
    fn the_spec_lists_exactly_the_route_statuses() {
        let listed: Vec<Option<u16>> = RouteError::<Ready>::meta()
            .responses
            .iter()
            .map(|r| r.status)
            .collect();
        assert_eq!(listed, [Some(503)]);
    }

    /// A route answering a status its list lacks would make the spec lie; tests, built
    /// with debug assertions, catch it where it happens.
    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "not among the statuses this route documents")]
    fn an_undocumented_status_is_caught_in_debug_builds() {
        let _ = RouteError::<Ready>::from(ApiError::ValueTooLarge("too large".into()));
    }
}
