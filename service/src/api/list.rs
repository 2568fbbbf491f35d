//! `GET /kv` and `DELETE /kv`: ordered listing of a range of keys, a page at a time,
//! and deleting a range in one Raft log entry (README, "Listing and range deletes").
//!
//! A range is `prefix=p` (every key that starts with `p`) or `start=a&end=b` (`[a, b)`,
//! either bound optional), in byte order of the keys' UTF-8, on every backend. A page
//! is read from the store with its own bound, so a node holds at most one page in
//! memory however many keys there are. Listings are at the current state of the data:
//! there are no past revisions to read.

use ::metrics::counter;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::auth::ClientAuth;
use super::error::ApiError;
use super::kv::ReadConsistency;
use super::route_error::{KvDeleteRange, KvList, RouteError};
use super::ApiTags;
use crate::raft::RaftNode;
use crate::store::{Command, CommandResult};
use crate::telemetry::metrics;
use crate::types::Record;

/// Pairs a page holds when the request names no `limit`.
pub const DEFAULT_LIMIT: u64 = 100;
/// A page also ends with the pair that brings its keys and values to this many bytes
/// (it holds at least one pair): `limit` pairs of the largest values would not fit in
/// memory. `next` is then set, as for any page that is not the last.
pub const MAX_PAGE_BYTES: usize = 4 << 20;

/// One pair of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Object)]
pub struct KeyValue {
    pub key: String,
    /// Absent with `keys_only=true`.
    #[oai(skip_serializing_if_is_none)]
    pub value: Option<String>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    /// The lease the key is attached to, if any.
    #[oai(skip_serializing_if_is_none)]
    pub lease: Option<u64>,
}

impl KeyValue {
    /// A pair as listings and transactions show it, its value left out unless
    /// `with_value`.
    pub fn new(key: String, record: Record, with_value: bool) -> Self {
        KeyValue {
            key,
            create_revision: record.meta.create_revision,
            mod_revision: record.meta.mod_revision,
            version: record.meta.version,
            lease: super::kv::lease_of(&record.meta),
            value: with_value.then_some(record.value),
        }
    }
}

/// The answer of `GET /kv`.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct ListResponse {
    /// The page's pairs, in byte order of the keys; empty with `count_only=true`.
    pub kvs: Vec<KeyValue>,
    /// The number of pairs in `kvs`; with `count_only=true`, the number of keys in the
    /// whole range.
    pub count: u64,
    /// The last key of this page, when more keys follow in the range: pass it as
    /// `after` (with the same `prefix`, or `start` and `end`) for the next page.
    /// Absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next: Option<String>,
    /// The node that served the request.
    pub node_id: u64,
}

impl Example for ListResponse {
    fn example() -> Self {
        ListResponse {
            kvs: vec![
                KeyValue {
                    key: "app/db/host".into(),
                    value: Some("10.0.0.5".into()),
                    create_revision: 4,
                    mod_revision: 9,
                    version: 2,
                    lease: None,
                },
                KeyValue {
                    key: "app/db/port".into(),
                    value: Some("5432".into()),
                    create_revision: 5,
                    mod_revision: 5,
                    version: 1,
                    lease: None,
                },
            ],
            count: 2,
            next: Some("app/db/port".into()),
            node_id: 1,
        }
    }
}

/// The answer of `DELETE /kv`.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct DeleteRangeResponse {
    /// How many keys the delete removed (0 when the range was empty).
    pub deleted: u64,
    pub message: String,
    /// The node that served the request.
    pub node_id: u64,
}

impl Example for DeleteRangeResponse {
    fn example() -> Self {
        DeleteRangeResponse {
            deleted: 2,
            message: "Keys deleted successfully".into(),
            node_id: 1,
        }
    }
}

#[derive(ApiResponse)]
pub enum ListResult {
    /// A page of the range (or its count).
    #[oai(status = 200)]
    Ok(Json<ListResponse>),
}

#[derive(ApiResponse)]
pub enum DeleteRangeResult {
    /// The range delete was committed through Raft and applied.
    #[oai(status = 200)]
    Ok(Json<DeleteRangeResponse>),
}

/// The keys `[start, end)` (`end: None`: no upper bound) a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: String,
    pub end: Option<String>,
}

impl KeyRange {
    /// The range of `prefix`, or of `start` and `end`; naming both kinds is an error.
    pub fn parse(
        prefix: Option<String>,
        start: Option<String>,
        end: Option<String>,
    ) -> Result<KeyRange, ApiError> {
        match (prefix, start, end) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(ApiError::InvalidParameter(
                "give either `prefix`, or `start` and `end`, not both".into(),
            )),
            (Some(prefix), None, None) => Ok(KeyRange {
                end: prefix_end(&prefix),
                start: prefix,
            }),
            (None, start, end) => Ok(KeyRange {
                start: start.unwrap_or_default(),
                end,
            }),
        }
    }
}

/// The least string above every string that starts with `prefix`, in byte order
/// (`None`: there is none, every key from `prefix` on starts with it). UTF-8 keeps
/// code point order as byte order, so raising the last character that can be raised
/// (and dropping those after it) gives it; the bound stays valid UTF-8, as keys are.
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut end = prefix.to_owned();
    while let Some(last) = end.pop() {
        let mut next = u32::from(last) + 1;
        if (0xD800..=0xDFFF).contains(&next) {
            // Surrogates are not characters; the next one is U+E000.
            next = 0xE000;
        }
        if let Some(next) = char::from_u32(next) {
            end.push(next);
            return Some(end);
        }
    }
    None
}

pub struct ListApi {
    pub node: RaftNode,
}

#[OpenApi(tag = "ApiTags::Kv")]
impl ListApi {
    /// List keys in order
    ///
    /// Lists the keys of a range, in byte order of their UTF-8, a page at a time: the
    /// keys that start with `prefix`, or those from `start` (inclusive) to `end`
    /// (exclusive); with neither, every key. The answer's `next`, present while more
    /// keys follow, is passed back as `after` for the next page. Walking pages this way
    /// visits every key that stays in the range throughout the walk exactly once, in
    /// order; a key written or deleted meanwhile may or may not show (each page is read
    /// at its own moment: listings are at the current state, there are no revisions to
    /// pin a walk to).
    ///
    /// `keys_only=true` leaves the values out; `count_only=true` answers only the
    /// number of keys in the range (`count`), counted without loading them. Reads are
    /// linearizable by default; `consistency=stale` answers from this node's copy, as
    /// `GET /kv/{key}` does.
    ///
    /// With `auth.tokens` set, needs a token with the `read` role.
    #[oai(path = "/kv", method = "get", operation_id = "list_keys")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        _auth: ClientAuth,
        /// Lists the keys that start with this (`app/` lists `app/db`, `app/web/1`...).
        /// Not with `start` or `end`.
        prefix: Query<Option<String>>,
        /// The first key of the range (inclusive); the empty string by default.
        start: Query<Option<String>>,
        /// The end of the range (exclusive); no end by default.
        end: Query<Option<String>>,
        /// Lists only keys after this one: the `next` of the previous page.
        after: Query<Option<String>>,
        /// Pairs per page: 1 to 10000, 100 by default.
        #[oai(validator(minimum(value = "1"), maximum(value = "10000")))]
        limit: Query<Option<u64>>,
        /// Leave the values out.
        #[oai(default)]
        keys_only: Query<bool>,
        /// Answer only the number of keys in the range.
        #[oai(default)]
        count_only: Query<bool>,
        /// `linearizable` (default) or `stale`.
        #[oai(default)]
        consistency: Query<ReadConsistency>,
    ) -> Result<ListResult, RouteError<KvList>> {
        let range = KeyRange::parse(prefix.0, start.0, end.0)?;
        // From 1 to 10000, as the validator above checks before the handler runs: the
        // largest limit bounds what one answer holds in memory.
        let limit = limit.0.unwrap_or(DEFAULT_LIMIT);
        let consistency = consistency.0.into();
        if count_only.0 {
            if after.0.is_some() || keys_only.0 {
                return Err(ApiError::InvalidParameter(
                    "`count_only` counts the whole range: not with `after` or `keys_only`".into(),
                )
                .into());
            }
            let count = self
                .node
                .count_range(&range.start, range.end.as_deref(), consistency)
                .await?;
            counter!(metrics::LIST_PAGES, "kind" => "count").increment(1);
            return Ok(ListResult::Ok(Json(ListResponse {
                kvs: Vec::new(),
                count,
                next: None,
                node_id: self.node.id(),
            })));
        }
        let limit = limit as usize;
        // After the cursor: read from it, and drop it if it is still there.
        let (from, cursor) = match after.0 {
            Some(after) if after >= range.start => (after, true),
            _ => (range.start, false),
        };
        // One more than the page, to know whether another page follows.
        let mut pairs = self
            .node
            .range(
                &from,
                range.end.as_deref(),
                limit + 1 + usize::from(cursor),
                MAX_PAGE_BYTES,
                consistency,
            )
            .await?;
        if cursor && pairs.first().is_some_and(|(key, _)| *key == from) {
            pairs.remove(0);
        }
        let bytes: usize = pairs.iter().map(|(k, r)| k.len() + r.value.len()).sum();
        // Cut short by size, the store could not look one pair ahead: another page
        // may follow (it may be empty).
        let more = pairs.len() > limit || bytes >= MAX_PAGE_BYTES;
        pairs.truncate(limit);
        let next = more
            .then(|| pairs.last().map(|(key, _)| key.clone()))
            .flatten();
        let keys_only = keys_only.0;
        let kvs: Vec<KeyValue> = pairs
            .into_iter()
            .map(|(key, record)| KeyValue::new(key, record, !keys_only))
            .collect();
        let kind = if keys_only { "keys" } else { "pairs" };
        counter!(metrics::LIST_PAGES, "kind" => kind).increment(1);
        Ok(ListResult::Ok(Json(ListResponse {
            count: kvs.len() as u64,
            kvs,
            next,
            node_id: self.node.id(),
        })))
    }

    /// Delete a range of keys
    ///
    /// Deletes every key that starts with `prefix`, or from `start` (inclusive) to `end`
    /// (exclusive), in one Raft log entry: every node removes the whole range at the
    /// same point of the log, and no read sees it half done. Answers how many keys were
    /// removed. A non-empty `prefix` or an explicit `start` is required, so that a
    /// request without bounds never deletes everything; `start=` (empty) with no `end`
    /// deletes every key, deliberately.
    ///
    /// With `auth.tokens` set, needs a token with the `write` role.
    #[oai(path = "/kv", method = "delete", operation_id = "delete_range")]
    async fn delete_range(
        &self,
        _auth: ClientAuth,
        /// Deletes the keys that start with this; must not be empty. Not with `start`
        /// or `end`.
        prefix: Query<Option<String>>,
        /// The first key of the range (inclusive).
        start: Query<Option<String>>,
        /// The end of the range (exclusive); no end by default.
        end: Query<Option<String>>,
    ) -> Result<DeleteRangeResult, RouteError<KvDeleteRange>> {
        if prefix.0.as_deref() == Some("") || (prefix.0.is_none() && start.0.is_none()) {
            return Err(ApiError::InvalidParameter(
                "a range delete needs a non-empty `prefix` or a `start` (`start=` with no \
                 `end` deletes every key)"
                    .into(),
            )
            .into());
        }
        let range = KeyRange::parse(prefix.0, start.0, end.0)?;
        let command = Command::DeleteRange {
            start: range.start,
            end: range.end,
        };
        let deleted = match self.node.submit(command).await? {
            CommandResult::DeletedRange { count } => count,
            other => {
                return Err(ApiError::Internal(format!(
                    "unexpected result for a range delete: {other:?}"
                ))
                .into())
            }
        };
        counter!(metrics::RANGE_DELETES).increment(1);
        counter!(metrics::RANGE_DELETED_KEYS).increment(deleted);
        Ok(DeleteRangeResult::Ok(Json(DeleteRangeResponse {
            deleted,
            message: "Keys deleted successfully".into(),
            node_id: self.node.id(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_before_the_first_key_without_it() {
        assert_eq!(prefix_end("app/").as_deref(), Some("app0"));
        assert_eq!(prefix_end("a").as_deref(), Some("b"));
        assert_eq!(prefix_end("").as_deref(), None);
        assert_eq!(prefix_end("a\u{10ffff}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{10ffff}").as_deref(), None);
        assert_eq!(prefix_end("\u{d7ff}").as_deref(), Some("\u{e000}"));
        // Every key with the prefix is below the end, in byte order.
        for key in ["a", "a\u{10ffff}\u{10ffff}", "a\u{7f}", "a\u{e9}"] {
            assert!(key < prefix_end("a").unwrap().as_str(), "{key:?}");
        }
    }

    #[test]
    fn a_range_is_a_prefix_or_bounds_never_both() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            KeyRange::parse(some("a/"), None, None).unwrap(),
            KeyRange {
                start: "a/".into(),
                end: some("a0")
            }
        );
        assert_eq!(
            KeyRange::parse(None, some("a"), some("c")).unwrap(),
            KeyRange {
                start: "a".into(),
                end: some("c")
            }
        );
        assert_eq!(
            KeyRange::parse(None, None, None).unwrap(),
            KeyRange {
                start: String::new(),
                end: None
            }
        );
        assert!(KeyRange::parse(some("a"), some("b"), None).is_err());
        assert!(KeyRange::parse(some("a"), None, some("b")).is_err());
    }
}
