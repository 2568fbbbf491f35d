//! `POST /txn`: etcd's transaction in JSON. Comparisons on keys decide which of two
//! lists of operations runs; the whole is one Raft log entry, applied atomically at one
//! revision on every node.

use std::collections::BTreeSet;

use ::metrics::counter;
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::Deserialize;

use super::auth::ClientAuth;
use super::body::JsonBody;
use super::error::ApiError;
use super::kv::{lease_of, write_refused, Key};
use super::list::{KeyRange, KeyValue};
use super::route_error::{RouteError, Txn as TxnStatuses};
use super::{ApiTags, Limits};
use crate::raft::RaftNode;
use crate::store::{Command, CommandResult};
use crate::telemetry::metrics;
use crate::types::{Compare, CompareOp, OpResult, Operand, Txn, TxnOp};

/// The most comparisons, and the most operations in each branch, of one transaction.
pub const MAX_TXN_ITEMS: usize = 128;
/// The most pairs one range operation reads (default 100).
pub const MAX_TXN_RANGE_LIMIT: u64 = 1000;

/// What a comparison looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum CompareTarget {
    /// The value (a string); no comparison of a missing key's value holds.
    Value,
    /// Writes since creation (0: the key does not exist).
    Version,
    /// The revision that created the key (0: it does not exist).
    CreateRevision,
    /// The revision of its last write (0: it does not exist).
    ModRevision,
    /// The lease it is attached to (0: none).
    Lease,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
pub enum CompareOperator {
    #[oai(rename = "=")]
    #[serde(rename = "=")]
    Equal,
    #[oai(rename = "!=")]
    #[serde(rename = "!=")]
    NotEqual,
    #[oai(rename = "<")]
    #[serde(rename = "<")]
    Less,
    #[oai(rename = ">")]
    #[serde(rename = ">")]
    Greater,
}

/// One comparison: `target` of `key` `op` `value`.
#[derive(Debug, Clone, Object, Deserialize)]
pub struct TxnCompare {
    pub key: String,
    pub target: CompareTarget,
    pub op: CompareOperator,
    /// A string for `value`, a non-negative integer for the others.
    pub value: serde_json::Value,
}

#[derive(Debug, Clone, Object, Deserialize)]
pub struct TxnPut {
    pub key: String,
    pub value: String,
    /// Attach the key to this lease.
    #[serde(default)]
    pub lease: Option<u64>,
}

#[derive(Debug, Clone, Object, Deserialize)]
pub struct TxnKey {
    pub key: String,
}

/// Reads keys in key order: those starting with `prefix`, or from `start` to `end`.
#[derive(Debug, Clone, Object, Deserialize)]
pub struct TxnRange {
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub end: Option<String>,
    /// 1 to 1000 pairs; 100 by default.
    #[serde(default)]
    pub limit: Option<u64>,
}

/// One operation: exactly one of `put`, `get`, `delete`, `range`.
#[derive(Debug, Clone, Object, Deserialize)]
pub struct TxnRequestOp {
    #[serde(default)]
    pub put: Option<TxnPut>,
    #[serde(default)]
    pub get: Option<TxnKey>,
    #[serde(default)]
    pub delete: Option<TxnKey>,
    #[serde(default)]
    pub range: Option<TxnRange>,
}

/// The body of `POST /txn`.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(example)]
pub struct TxnRequest {
    /// All must hold for `success` to run; otherwise `failure` runs. Empty: `success`.
    #[serde(default)]
    #[oai(default)]
    pub compare: Vec<TxnCompare>,
    #[serde(default)]
    #[oai(default)]
    pub success: Vec<TxnRequestOp>,
    #[serde(default)]
    #[oai(default)]
    pub failure: Vec<TxnRequestOp>,
}

impl Example for TxnRequest {
    fn example() -> Self {
        // Take a lock: create the key only if it does not exist, attached to a lease;
        // otherwise read who holds it.
        TxnRequest {
            compare: vec![TxnCompare {
                key: "locks/db".into(),
                target: CompareTarget::CreateRevision,
                op: CompareOperator::Equal,
                value: 0.into(),
            }],
            success: vec![TxnRequestOp {
                put: Some(TxnPut {
                    key: "locks/db".into(),
                    value: "worker-1".into(),
                    lease: Some(42),
                }),
                get: None,
                delete: None,
                range: None,
            }],
            failure: vec![TxnRequestOp {
                put: None,
                get: Some(TxnKey {
                    key: "locks/db".into(),
                }),
                delete: None,
                range: None,
            }],
        }
    }
}

#[derive(Debug, Clone, Object)]
pub struct TxnPutResult {
    pub key: String,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    #[oai(skip_serializing_if_is_none)]
    pub lease: Option<u64>,
}

/// A get: `found` false and no value when the key does not exist.
#[derive(Debug, Clone, Object)]
pub struct TxnGetResult {
    pub key: String,
    pub found: bool,
    #[oai(skip_serializing_if_is_none)]
    pub value: Option<String>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    #[oai(skip_serializing_if_is_none)]
    pub lease: Option<u64>,
}

#[derive(Debug, Clone, Object)]
pub struct TxnDeleteResult {
    pub key: String,
    /// Whether the key existed.
    pub deleted: bool,
}

#[derive(Debug, Clone, Object)]
pub struct TxnRangeResult {
    pub kvs: Vec<KeyValue>,
    /// More keys may follow the last one in the range.
    pub more: bool,
}

/// One operation's result: the field named as the operation.
#[derive(Debug, Clone, Object)]
pub struct TxnResponseOp {
    #[oai(skip_serializing_if_is_none)]
    pub put: Option<TxnPutResult>,
    #[oai(skip_serializing_if_is_none)]
    pub get: Option<TxnGetResult>,
    #[oai(skip_serializing_if_is_none)]
    pub delete: Option<TxnDeleteResult>,
    #[oai(skip_serializing_if_is_none)]
    pub range: Option<TxnRangeResult>,
}

/// The answer of `POST /txn`.
#[derive(Debug, Clone, Object)]
pub struct TxnResponse {
    /// Whether every comparison held (and `success` ran).
    pub succeeded: bool,
    /// The transaction's revision: every key it wrote has it as `mod_revision`.
    pub revision: u64,
    /// One result per operation of the branch that ran, in order.
    pub results: Vec<TxnResponseOp>,
    /// The node that served the request.
    pub node_id: u64,
}

#[derive(ApiResponse)]
pub enum TxnResult {
    /// The transaction was committed through Raft and applied; `succeeded` says which
    /// branch ran.
    #[oai(status = 200)]
    Ok(Json<TxnResponse>),
}

pub struct TxnApi {
    pub node: RaftNode,
    pub limits: Limits,
}

#[OpenApi(tag = "ApiTags::Kv")]
impl TxnApi {
    /// Run a transaction
    ///
    /// etcd's transaction: if every comparison in `compare` holds, the operations in
    /// `success` run, else those in `failure`; all in one Raft log entry, atomically,
    /// at one revision. Comparisons look at a key's `value`, `version`,
    /// `create_revision`, `mod_revision` or `lease` with `=`, `!=`, `<` or `>`; a key
    /// that does not exist has 0 for the numbers and no value. Operations: `put`
    /// (optionally with a `lease`), `get`, `delete`, `range` (a read of up to 1000
    /// pairs, by `prefix` or `start`/`end`). Later operations see earlier ones'
    /// writes. At most 128 comparisons and 128 operations per branch; a key may be
    /// written once per branch, and a range may not cover a key the branch writes.
    ///
    /// Compare-and-set: `compare` `mod_revision = <rev>`, `success` a put. A lock:
    /// `compare` `create_revision = 0`, `success` a put with a lease.
    ///
    /// With `auth.tokens` set, needs a token with the `write` role.
    #[oai(path = "/txn", method = "post", operation_id = "txn")]
    async fn txn(
        &self,
        _auth: ClientAuth,
        body: JsonBody<TxnRequest>,
    ) -> Result<TxnResult, RouteError<TxnStatuses>> {
        let txn = self.validate(body.0)?;
        let first_put_key = txn
            .success
            .iter()
            .chain(&txn.failure)
            .find_map(|op| match op {
                TxnOp::Put { key, .. } => Some(key.clone()),
                _ => None,
            })
            .unwrap_or_default();
        match self.node.submit(Command::Txn(txn)).await? {
            CommandResult::Txn {
                succeeded,
                results,
                revision,
            } => {
                let label = if succeeded { "success" } else { "failure" };
                counter!(metrics::TXNS, "result" => label).increment(1);
                Ok(TxnResult::Ok(Json(TxnResponse {
                    succeeded,
                    revision,
                    results: results.into_iter().map(op_result).collect(),
                    node_id: self.node.id(),
                })))
            }
            other => Err(write_refused(first_put_key, other).into()),
        }
    }
}

impl TxnApi {
    /// Checks the request and builds the transaction the log carries.
    fn validate(&self, request: TxnRequest) -> Result<Txn, ApiError> {
        let invalid = |why: String| ApiError::InvalidTxn(why);
        if request.compare.len() > MAX_TXN_ITEMS
            || request.success.len() > MAX_TXN_ITEMS
            || request.failure.len() > MAX_TXN_ITEMS
        {
            return Err(invalid(format!(
                "at most {MAX_TXN_ITEMS} comparisons and {MAX_TXN_ITEMS} operations per branch"
            )));
        }
        let compare = request
            .compare
            .into_iter()
            .map(|c| self.compare(c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Txn {
            compare,
            success: self.branch(request.success, "success")?,
            failure: self.branch(request.failure, "failure")?,
        })
    }

    fn key(&self, key: String) -> Result<String, ApiError> {
        Ok(Key::parse(key, self.limits.max_key_bytes)?.into_inner())
    }

    fn compare(&self, c: TxnCompare) -> Result<Compare, ApiError> {
        let key = self.key(c.key)?;
        let number = || {
            c.value.as_u64().ok_or_else(|| {
                ApiError::InvalidTxn(format!(
                    "compare on {key:?}: `{}` takes a non-negative integer `value`",
                    poem_openapi::types::ToJSON::to_json(&c.target).unwrap_or_default()
                ))
            })
        };
        let operand = match c.target {
            CompareTarget::Value => match &c.value {
                serde_json::Value::String(v) => Operand::Value(v.clone()),
                _ => {
                    return Err(ApiError::InvalidTxn(format!(
                        "compare on {key:?}: `value` takes a string `value`"
                    )))
                }
            },
            CompareTarget::Version => Operand::Version(number()?),
            CompareTarget::CreateRevision => Operand::CreateRevision(number()?),
            CompareTarget::ModRevision => Operand::ModRevision(number()?),
            CompareTarget::Lease => Operand::Lease(number()?),
        };
        let op = match c.op {
            CompareOperator::Equal => CompareOp::Equal,
            CompareOperator::NotEqual => CompareOp::NotEqual,
            CompareOperator::Less => CompareOp::Less,
            CompareOperator::Greater => CompareOp::Greater,
        };
        Ok(Compare { key, op, operand })
    }

    fn branch(&self, ops: Vec<TxnRequestOp>, name: &str) -> Result<Vec<TxnOp>, ApiError> {
        let mut out = Vec::with_capacity(ops.len());
        for (i, op) in ops.into_iter().enumerate() {
            let what = format!("{name}[{i}]");
            out.push(match (op.put, op.get, op.delete, op.range) {
                (Some(put), None, None, None) => {
                    if put.value.is_empty() {
                        return Err(ApiError::EmptyValue);
                    }
                    if put.value.len() > self.limits.max_value_bytes {
                        return Err(ApiError::ValueTooLarge(format!(
                            "{what}: value is {} bytes; the limit is {} bytes",
                            put.value.len(),
                            self.limits.max_value_bytes
                        )));
                    }
                    TxnOp::Put {
                        key: self.key(put.key)?,
                        value: put.value,
                        lease: put.lease,
                    }
                }
                (None, Some(get), None, None) => TxnOp::Get {
                    key: self.key(get.key)?,
                },
                (None, None, Some(delete), None) => TxnOp::Delete {
                    key: self.key(delete.key)?,
                },
                (None, None, None, Some(range)) => {
                    let limit = range.limit.unwrap_or(100);
                    if !(1..=MAX_TXN_RANGE_LIMIT).contains(&limit) {
                        return Err(ApiError::InvalidTxn(format!(
                            "{what}: `limit` must be 1 to {MAX_TXN_RANGE_LIMIT}"
                        )));
                    }
                    let bounds = KeyRange::parse(range.prefix, range.start, range.end)?;
                    TxnOp::Range {
                        start: bounds.start,
                        end: bounds.end,
                        limit: limit as usize,
                    }
                }
                _ => {
                    return Err(ApiError::InvalidTxn(format!(
                        "{what}: an operation has exactly one of `put`, `get`, `delete`, \
                         `range`"
                    )))
                }
            });
        }
        check_writes(&out, name)?;
        Ok(out)
    }
}

/// A branch writes each key at most once, and reads no range that holds a key it
/// writes (the range would see the branch half applied on some backends).
fn check_writes(ops: &[TxnOp], name: &str) -> Result<(), ApiError> {
    let mut written = BTreeSet::new();
    for op in ops {
        if let TxnOp::Put { key, .. } | TxnOp::Delete { key } = op {
            if !written.insert(key.as_str()) {
                return Err(ApiError::InvalidTxn(format!(
                    "{name}: key {key:?} is written twice"
                )));
            }
        }
    }
    for op in ops {
        if let TxnOp::Range { start, end, .. } = op {
            let covered = written.iter().find(|key| {
                **key >= start.as_str() && end.as_deref().is_none_or(|end| **key < end)
            });
            if let Some(key) = covered {
                return Err(ApiError::InvalidTxn(format!(
                    "{name}: a range covers key {key:?}, which the same branch writes"
                )));
            }
        }
    }
    Ok(())
}

fn op_result(result: OpResult) -> TxnResponseOp {
    let mut op = TxnResponseOp {
        put: None,
        get: None,
        delete: None,
        range: None,
    };
    match result {
        OpResult::Put { key, meta } => {
            op.put = Some(TxnPutResult {
                key,
                create_revision: meta.create_revision,
                mod_revision: meta.mod_revision,
                version: meta.version,
                lease: lease_of(&meta),
            })
        }
        OpResult::Get { key, record } => {
            let meta = record.as_ref().map(|r| r.meta).unwrap_or_default();
            op.get = Some(TxnGetResult {
                key,
                found: record.is_some(),
                value: record.map(|r| r.value),
                create_revision: meta.create_revision,
                mod_revision: meta.mod_revision,
                version: meta.version,
                lease: lease_of(&meta),
            })
        }
        OpResult::Delete { key, existed } => {
            op.delete = Some(TxnDeleteResult {
                key,
                deleted: existed,
            })
        }
        OpResult::Range { pairs, more } => {
            op.range = Some(TxnRangeResult {
                kvs: pairs
                    .into_iter()
                    .map(|(key, record)| KeyValue::new(key, record, true))
                    .collect(),
                more,
            })
        }
    }
    op
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: "v".into(),
            lease: None,
        }
    }

    #[test]
    fn a_branch_writes_a_key_once_and_reads_no_range_it_writes() {
        assert!(check_writes(&[put("a"), put("b"), TxnOp::Get { key: "a".into() }], "s").is_ok());
        assert!(check_writes(&[put("a"), TxnOp::Delete { key: "a".into() }], "s").is_err());
        let range = |start: &str, end: Option<&str>| TxnOp::Range {
            start: start.into(),
            end: end.map(Into::into),
            limit: 10,
        };
        assert!(check_writes(&[put("b/1"), range("a/", Some("a0"))], "s").is_ok());
        assert!(check_writes(&[range("b/", Some("b0")), put("b/1")], "s").is_err());
        assert!(check_writes(&[put("z"), range("a", None)], "s").is_err());
    }
}
