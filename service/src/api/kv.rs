//! `/kv/{key}`: the key-value API, with the request and response shapes of the API
//! contract in the README (section "API").

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::Deserialize;

use super::auth::ClientAuth;
use super::body::JsonBody;
use super::error::ApiError;
use super::route_error::{KvDelete, KvGet, KvPut, RouteError};
use super::{ApiTags, Limits};
use crate::raft::{Consistency, RaftNode};

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
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

impl Example for PutRequest {
    fn example() -> Self {
        PutRequest {
            value: "John Doe".into(),
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
}

impl Example for PutResponse {
    fn example() -> Self {
        PutResponse {
            key: "user:1".into(),
            value: "John Doe".into(),
            message: "Key-value pair stored successfully".into(),
            node_id: 1,
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
}

impl Example for GetResponse {
    fn example() -> Self {
        GetResponse {
            key: "user:1".into(),
            value: "John Doe".into(),
            node_id: 1,
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
}

impl Example for DeleteResponse {
    fn example() -> Self {
        DeleteResponse {
            key: "user:1".into(),
            message: "Key deleted successfully".into(),
            node_id: 1,
        }
    }
}

#[derive(ApiResponse)]
pub enum PutResult {
    /// The value was committed through Raft and applied.
    #[oai(status = 201)]
    Created(Json<PutResponse>),
}

#[derive(ApiResponse)]
pub enum GetResult {
    /// The key's current value.
    #[oai(status = 200)]
    Ok(Json<GetResponse>),
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
    /// committed and applied. The key is the rest of the path, percent-decoded, and may
    /// contain `/` (`PUT /kv/app/db/host` stores `app/db/host`); in Swagger UI, type it
    /// as is and it is escaped for you.
    ///
    /// With `auth.tokens` set, needs a token with the `write` role.
    #[oai(path = "/kv/:key", method = "put", operation_id = "put_key")]
    async fn put(
        &self,
        _auth: ClientAuth,
        /// The key: 1 to `server.max_key_bytes` (1024) bytes of UTF-8.
        key: Path<String>,
        body: JsonBody<PutRequest>,
    ) -> Result<PutResult, RouteError<KvPut>> {
        let key = Key::parse(key.0, self.limits.max_key_bytes)?.into_inner();
        let value = body.0.value;
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
        self.node.put(key.clone(), value.clone()).await?;
        Ok(PutResult::Created(Json(PutResponse {
            key,
            value,
            message: "Key-value pair stored successfully".into(),
            node_id: self.node.id(),
        })))
    }

    /// Read a value
    ///
    /// Reads are linearizable by default: the node confirms with a quorum that it
    /// still leads and waits until it has applied everything committed before the read
    /// began. `consistency=stale` skips that and answers from the local copy, which may
    /// be behind the leader.
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
            Some(value) => Ok(GetResult::Ok(Json(GetResponse {
                key,
                value,
                node_id: self.node.id(),
            }))),
            None => Err(ApiError::KeyNotFound(key).into()),
        }
    }

    /// Delete a key
    ///
    /// Deletes `key` through the Raft log. Whether the key existed is decided when the
    /// delete is applied, so a 404 here is as consistent as the delete itself.
    ///
    /// With `auth.tokens` set, needs a token with the `write` role.
    #[oai(path = "/kv/:key", method = "delete", operation_id = "delete_key")]
    async fn delete(
        &self,
        _auth: ClientAuth,
        /// The key: 1 to `server.max_key_bytes` (1024) bytes of UTF-8.
        key: Path<String>,
    ) -> Result<DeleteResult, RouteError<KvDelete>> {
        let key = Key::parse(key.0, self.limits.max_key_bytes)?.into_inner();
        if self.node.delete(key.clone()).await? {
            Ok(DeleteResult::Ok(Json(DeleteResponse {
                key,
                message: "Key deleted successfully".into(),
                node_id: self.node.id(),
            })))
        } else {
            Err(ApiError::KeyNotFound(key).into())
        }
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
    fn key_length_counts_bytes_not_characters() {
        // "é" is two bytes in UTF-8.
        assert!(Key::parse("éé".into(), 4).is_ok());
        assert!(Key::parse("ééé".into(), 4).is_err());
    }
}
