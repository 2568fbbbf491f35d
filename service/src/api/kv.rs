//! `/kv/{key}`: the key-value API, with the request and response shapes of the API
//! contract in the README (section "API").

use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::Deserialize;

use super::auth::ClientAuth;
use super::body::JsonBody;
use super::error::{ApiError, CurrentRevisions};
use super::route_error::{KvDelete, KvGet, KvPut, RouteError};
use super::{ApiTags, Limits};
use crate::raft::{Consistency, RaftNode};
use crate::store::{Command, CommandResult};
use crate::telemetry::metrics;
use crate::types::{Condition, KeyMeta};

/// The longest TTL a lease may have: one year.
pub const MAX_TTL_SECONDS: u64 = 365 * 24 * 3600;

/// A validated key: 1 to `server.max_key_bytes` bytes of UTF-8. It may contain `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    pub fn parse(raw: String, max_bytes: usize) -> Result<Key, ApiError> {
        if raw.is_empty() {
            return Err(ApiError::InvalidKey("key must not be empty".into()));
        }
        if raw.len() > max_bytes {
            return Err(ApiError::KeyTooLarge {
                len: raw.len(),
                max: max_bytes,
            });
        }
        Ok(Key(raw))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// The body of `PUT /kv/{key}`.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(example)]
pub struct PutRequest {
    /// The value to store: a non-empty UTF-8 string of at most `server.max_value_bytes`
    /// bytes (1 MiB by default).
    // A missing or null `value` reads as empty, so `{}`, `{"value": null}` and
    // `{"val": "x"}` answer `EMPTY_VALUE` like `{"value": ""}`, as the README's error
    // table says.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub value: String,
    /// Attach the key to this lease (`POST /leases`): the key is deleted when the lease
    /// expires or is revoked. A lease that does not exist answers 404
    /// `LEASE_NOT_FOUND`.
    #[serde(default)]
    pub lease: Option<u64>,
    /// Give the key a lease of its own with this TTL, 1 to 31536000 seconds, granted in
    /// the same write; the answer's `lease` names it (keep it alive with
    /// `POST /leases/{id}/keepalive`). Not with `lease`.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

impl Example for PutRequest {
    fn example() -> Self {
        PutRequest {
            value: "John Doe".into(),
            lease: None,
            ttl_seconds: None,
        }
    }
}

#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct PutResponse {
    pub key: String,
    pub value: String,
    pub message: String,
    /// The node that served the request.
    pub node_id: u64,
    /// The revision of the write that created the key (this one, for a new key).
    pub create_revision: u64,
    /// This write's revision: cluster-wide, increasing with every change.
    pub mod_revision: u64,
    /// Writes to the key since it was created: 1 for a new key.
    pub version: u64,
    /// The lease the key is attached to, if any.
    #[oai(skip_serializing_if_is_none)]
    pub lease: Option<u64>,
}

impl Example for PutResponse {
    fn example() -> Self {
        PutResponse {
            key: "user:1".into(),
            value: "John Doe".into(),
            message: "Key-value pair stored successfully".into(),
            node_id: 1,
            create_revision: 7,
            mod_revision: 12,
            version: 2,
            lease: None,
        }
    }
}

#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct GetResponse {
    pub key: String,
    pub value: String,
    /// The node that served the request.
    pub node_id: u64,
    /// The revision of the write that created the key.
    pub create_revision: u64,
    /// The revision of the key's last write (also sent as the `ETag`).
    pub mod_revision: u64,
    /// Writes to the key since it was created.
    pub version: u64,
    /// The lease the key is attached to, if any.
    #[oai(skip_serializing_if_is_none)]
    pub lease: Option<u64>,
}

impl Example for GetResponse {
    fn example() -> Self {
        GetResponse {
            key: "user:1".into(),
            value: "John Doe".into(),
            node_id: 1,
            create_revision: 7,
            mod_revision: 12,
            version: 2,
            lease: None,
        }
    }
}

#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct DeleteResponse {
    pub key: String,
    pub message: String,
    /// The node that served the request.
    pub node_id: u64,
    /// The delete's revision.
    pub revision: u64,
}

impl Example for DeleteResponse {
    fn example() -> Self {
        DeleteResponse {
            key: "user:1".into(),
            message: "Key deleted successfully".into(),
            node_id: 1,
            revision: 13,
        }
    }
}

#[derive(ApiResponse)]
pub enum PutResult {
    /// The value was committed through Raft and applied.
    #[oai(status = 201)]
    Created(
        Json<PutResponse>,
        /// The write's revision, quoted (`"12"`): send it back as `If-Match` to write
        /// only if nothing changed the key since.
        #[oai(header = "ETag")]
        String,
    ),
}

#[derive(ApiResponse)]
pub enum GetResult {
    /// The key's current value.
    #[oai(status = 200)]
    Ok(
        Json<GetResponse>,
        /// The key's `mod_revision`, quoted (`"12"`), for `If-Match`.
        #[oai(header = "ETag")]
        String,
    ),
}

#[derive(ApiResponse)]
pub enum DeleteResult {
    /// The key existed and its deletion was committed through Raft.
    #[oai(status = 200)]
    Ok(Json<DeleteResponse>),
}

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Enum)]
#[oai(rename_all = "lowercase")]
pub enum ReadConsistency {
    /// The default: the answer reflects every write acknowledged before the read began.
    #[default]
    Linearizable,
    /// Served from this node's local copy without contacting the leader: faster and
    /// available without a quorum, but it may miss recent writes.
    Stale,
}

impl From<ReadConsistency> for Consistency {
    fn from(c: ReadConsistency) -> Self {
        match c {
            ReadConsistency::Linearizable => Consistency::Linearizable,
            ReadConsistency::Stale => Consistency::Stale,
        }
    }
}

pub struct KvApi {
    pub node: RaftNode,
    pub limits: Limits,
}

#[OpenApi(tag = "ApiTags::Kv")]
impl KvApi {
    /// Store a value
    ///
    /// Stores `value` under `key` through the Raft log; answers once the write is
    /// committed and applied, with the key's revisions (and `ETag: "<mod_revision>"`).
    /// The key is the rest of the path, percent-decoded, and may contain `/`
    /// (`PUT /kv/app/db/host` stores `app/db/host`); in Swagger UI, type it as is and
    /// it is escaped for you.
    ///
    /// Conditional writes (compare-and-set), decided when the write is applied, in log
    /// order: `If-Match: "<rev>"` writes only if the key's `mod_revision` is `rev`;
    /// `If-Match: *` only if the key exists; `If-None-Match: *` only if it does not
    /// (create). Otherwise nothing changes and the answer is 412
    /// `PRECONDITION_FAILED` with the key's `current` revisions.
    ///
    /// With `auth.tokens` set, needs a token with the `write` role.
    #[oai(path = "/kv/:key", method = "put", operation_id = "put_key")]
    async fn put(
        &self,
        _auth: ClientAuth,
        /// The key: 1 to `server.max_key_bytes` (1024) bytes of UTF-8.
        key: Path<String>,
        /// `"<mod_revision>"` (as the `ETag` of a GET or PUT) or `*`.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        /// `*`: create only.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
        body: JsonBody<PutRequest>,
    ) -> Result<PutResult, RouteError<KvPut>> {
        let key = Key::parse(key.0, self.limits.max_key_bytes)?.into_inner();
        let condition = condition(if_match.0.as_deref(), if_none_match.0.as_deref())?;
        let PutRequest {
            value,
            lease,
            ttl_seconds,
        } = body.0;
        if value.is_empty() {
            return Err(ApiError::EmptyValue.into());
        }
        if value.len() > self.limits.max_value_bytes {
            return Err(ApiError::ValueTooLarge(format!(
                "value is {} bytes; the limit is {} bytes",
                value.len(),
                self.limits.max_value_bytes
            ))
            .into());
        }
        if lease.is_some() && ttl_seconds.is_some() {
            return Err(ApiError::InvalidParameter(
                "`lease` and `ttl_seconds` cannot both be given".into(),
            )
            .into());
        }
        if let Some(ttl) = ttl_seconds {
            check_ttl(ttl)?;
        }
        let command = Command::Put {
            key: key.clone(),
            value: value.clone(),
            lease,
            ttl_seconds,
            condition,
        };
        match self.node.submit(command).await? {
            CommandResult::Put { meta, granted } => {
                if granted.is_some() {
                    ::metrics::counter!(metrics::LEASES_GRANTED).increment(1);
                }
                Ok(PutResult::Created(
                    Json(PutResponse {
                        key,
                        value,
                        message: "Key-value pair stored successfully".into(),
                        node_id: self.node.id(),
                        create_revision: meta.create_revision,
                        mod_revision: meta.mod_revision,
                        version: meta.version,
                        lease: lease_of(&meta),
                    }),
                    etag(meta.mod_revision),
                ))
            }
            other => Err(write_refused(key, other).into()),
        }
    }

    /// Read a value
    ///
    /// Reads are linearizable by default: the node confirms with a quorum that it
    /// still leads and waits until it has applied everything committed before the read
    /// began. `consistency=stale` skips that and answers from the local copy, which may
    /// be behind the leader. The answer carries the key's revisions, and
    /// `ETag: "<mod_revision>"` for a conditional write.
    ///
    /// With `auth.tokens` set, needs a token with the `read` role.
    #[oai(path = "/kv/:key", method = "get", operation_id = "get_key")]
    async fn get(
        &self,
        _auth: ClientAuth,
        /// The key: 1 to `server.max_key_bytes` (1024) bytes of UTF-8.
        key: Path<String>,
        /// `linearizable` (default) or `stale`.
        #[oai(default)]
        consistency: Query<ReadConsistency>,
    ) -> Result<GetResult, RouteError<KvGet>> {
        let key = Key::parse(key.0, self.limits.max_key_bytes)?.into_inner();
        match self.node.get(&key, consistency.0.into()).await? {
            Some(record) => Ok(GetResult::Ok(
                Json(GetResponse {
                    key,
                    value: record.value,
                    node_id: self.node.id(),
                    create_revision: record.meta.create_revision,
                    mod_revision: record.meta.mod_revision,
                    version: record.meta.version,
                    lease: lease_of(&record.meta),
                }),
                etag(record.meta.mod_revision),
            )),
            None => Err(ApiError::KeyNotFound(key).into()),
        }
    }

    /// Delete a key
    ///
    /// Deletes `key` through the Raft log. Whether the key existed is decided when the
    /// delete is applied, so a 404 here is as consistent as the delete itself.
    /// `If-Match: "<rev>"` deletes only if the key's `mod_revision` is `rev` (412
    /// `PRECONDITION_FAILED` otherwise).
    ///
    /// With `auth.tokens` set, needs a token with the `write` role.
    #[oai(path = "/kv/:key", method = "delete", operation_id = "delete_key")]
    async fn delete(
        &self,
        _auth: ClientAuth,
        /// The key: 1 to `server.max_key_bytes` (1024) bytes of UTF-8.
        key: Path<String>,
        /// `"<mod_revision>"` or `*`.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
    ) -> Result<DeleteResult, RouteError<KvDelete>> {
        let key = Key::parse(key.0, self.limits.max_key_bytes)?.into_inner();
        let condition = condition(if_match.0.as_deref(), None)?;
        let command = Command::Delete {
            key: key.clone(),
            condition,
        };
        match self.node.submit(command).await? {
            CommandResult::Deleted {
                existed: true,
                revision,
            } => Ok(DeleteResult::Ok(Json(DeleteResponse {
                key,
                message: "Key deleted successfully".into(),
                node_id: self.node.id(),
                revision,
            }))),
            CommandResult::Deleted { existed: false, .. } => Err(ApiError::KeyNotFound(key).into()),
            other => Err(write_refused(key, other).into()),
        }
    }
}

/// An `ETag` header value: the revision, quoted.
pub fn etag(revision: u64) -> String {
    format!("\"{revision}\"")
}

/// The `lease` field of an answer: none for 0.
pub fn lease_of(meta: &KeyMeta) -> Option<u64> {
    (meta.lease != 0).then_some(meta.lease)
}

/// A TTL in range, or `INVALID_PARAMETER` naming the range.
pub fn check_ttl(ttl: u64) -> Result<(), ApiError> {
    if (1..=MAX_TTL_SECONDS).contains(&ttl) {
        Ok(())
    } else {
        Err(ApiError::InvalidParameter(format!(
            "`ttl_seconds` must be 1 to {MAX_TTL_SECONDS}; got {ttl}"
        )))
    }
}

/// The condition of `If-Match` / `If-None-Match`, if any. `If-Match` takes one
/// revision, quoted as an `ETag` is (`"12"`, a bare `12` too) or `*`;
/// `If-None-Match` takes `*` only.
fn condition(
    if_match: Option<&str>,
    if_none_match: Option<&str>,
) -> Result<Option<Condition>, ApiError> {
    let bad = |what: &str| ApiError::InvalidParameter(what.to_string());
    match (if_match.map(str::trim), if_none_match.map(str::trim)) {
        (Some(_), Some(_)) => Err(bad("give `If-Match` or `If-None-Match`, not both")),
        (None, None) => Ok(None),
        (None, Some("*")) => Ok(Some(Condition::Absent)),
        (None, Some(_)) => Err(bad(
            "`If-None-Match` takes `*` only (create the key only if it does not exist)",
        )),
        (Some("*"), None) => Ok(Some(Condition::Exists)),
        (Some(tag), None) => {
            let tag = tag
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(tag);
            tag.parse::<u64>()
                .map(|rev| Some(Condition::ModRevision(rev)))
                .map_err(|_| {
                    bad("`If-Match` takes a revision as the `ETag` gives it (\"12\") or `*`")
                })
        }
    }
}

/// The answer to a write the state machine refused: a condition that did not hold, or
/// a lease that is gone.
pub fn write_refused(key: String, result: CommandResult) -> ApiError {
    match result {
        CommandResult::PreconditionFailed { current } => {
            ::metrics::counter!(metrics::PRECONDITION_FAILURES).increment(1);
            ApiError::PreconditionFailed {
                key,
                current: current_revisions(current),
            }
        }
        CommandResult::LeaseNotFound { id } => ApiError::LeaseNotFound(id),
        other => ApiError::Internal(format!("unexpected result for a write: {other:?}")),
    }
}

/// The `current` of a 412 answer.
fn current_revisions(meta: Option<KeyMeta>) -> CurrentRevisions {
    match meta {
        Some(meta) => CurrentRevisions {
            exists: true,
            create_revision: meta.create_revision,
            mod_revision: meta.mod_revision,
            version: meta.version,
        },
        None => CurrentRevisions::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_limits_are_inclusive() {
        assert!(Key::parse("a".repeat(4), 4).is_ok());
        assert!(matches!(
            Key::parse("a".repeat(5), 4),
            Err(ApiError::KeyTooLarge { len: 5, max: 4 })
        ));
        assert!(matches!(
            Key::parse(String::new(), 4),
            Err(ApiError::InvalidKey(_))
        ));
    }

    #[test]
    fn a_missing_or_null_value_reads_as_empty() {
        for body in [
            r#"{}"#,
            r#"{"value": null}"#,
            r#"{"val": "x"}"#,
            r#"{"value": ""}"#,
        ] {
            let req: PutRequest = serde_json::from_str(body).unwrap();
            assert_eq!(req.value, "", "{body}");
        }
        for body in [r#"{"value": 42}"#, "[1]", r#""x""#] {
            assert!(serde_json::from_str::<PutRequest>(body).is_err(), "{body}");
        }
    }

    #[test]
    fn conditions_come_from_the_headers() {
        assert_eq!(condition(None, None).unwrap(), None);
        assert_eq!(
            condition(Some("\"12\""), None).unwrap(),
            Some(Condition::ModRevision(12))
        );
        assert_eq!(
            condition(Some(" 7 "), None).unwrap(),
            Some(Condition::ModRevision(7))
        );
        assert_eq!(condition(Some("*"), None).unwrap(), Some(Condition::Exists));
        assert_eq!(condition(None, Some("*")).unwrap(), Some(Condition::Absent));
        for (m, n) in [
            (Some("W/\"1\""), None),
            (Some("abc"), None),
            (None, Some("\"3\"")),
            (Some("1"), Some("*")),
        ] {
            assert!(
                matches!(condition(m, n), Err(ApiError::InvalidParameter(_))),
                "{m:?} {n:?}"
            );
        }
    }

    #[test]
    fn key_length_counts_bytes_not_characters() {
        // "é" is two bytes in UTF-8.
        assert!(Key::parse("éé".into(), 4).is_ok());
        assert!(Key::parse("ééé".into(), 4).is_err());
    }
}
