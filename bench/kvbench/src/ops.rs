//! The `list` and `cas` workloads' requests and the preload's batches, for kvstore and
//! for etcd's JSON gateway, and the parsing of their answers.

use base64::Engine;
use reqwest::header::{HeaderMap, ETAG};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The prefix of every key the workloads use (`bench-0`, `bench-1`, ...).
pub const KEY_PREFIX: &str = "bench-";

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| "BAD_ANSWER".to_string())
}

/// The first key after every key that starts with `prefix` (etcd's `range_end` for a
/// prefix): its last byte below 0xff plus one, the bytes after it dropped.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): etcd's "to the end of the key space".
    vec![0]
}

/// Sends a request; a failure without an answer is `TIMEOUT` or `CONNECTION`.
async fn send(req: reqwest::RequestBuilder) -> Result<(StatusCode, HeaderMap, Vec<u8>), String> {
    let resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            "TIMEOUT".to_string()
        } else {
            "CONNECTION".to_string()
        }
    })?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(|_| "CONNECTION".to_string())?;
    Ok((status, headers, body.to_vec()))
}

/// The error code of a failed answer: the API's `code`, else `HTTP_<status>`.
pub fn error_code(status: StatusCode, body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("HTTP_{}", status.as_u16()))
}

fn json_body(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|_| "BAD_ANSWER".to_string())
}

/// One page of a listing: how many pairs it held, and where the next page starts
/// (`None` after the last page).
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub pairs: u64,
    pub next: Option<String>,
}

/// kvstore: `GET /kv?prefix=bench-&limit=..[&after=..]`.
pub async fn kv_list_page(
    client: &reqwest::Client,
    url: &str,
    limit: u64,
    after: Option<&str>,
) -> Result<Page, String> {
    let limit = limit.to_string();
    let mut query = vec![("prefix", KEY_PREFIX), ("limit", limit.as_str())];
    if let Some(after) = after {
        query.push(("after", after));
    }
    let (status, _, body) = send(client.get(format!("{url}/kv")).query(&query)).await?;
    if !status.is_success() {
        return Err(error_code(status, &body));
    }
    kv_page(&json_body(&body)?)
}

/// A kvstore page's answer.
pub fn kv_page(body: &Value) -> Result<Page, String> {
    let pairs = body["kvs"].as_array().ok_or("BAD_ANSWER")?.len() as u64;
    Ok(Page {
        pairs,
        next: body["next"].as_str().map(str::to_owned),
    })
}

/// etcd: the `/v3/kv/range` request for the page after `after` (from the prefix's
/// first key without it).
pub fn etcd_range_body(limit: u64, after: Option<&str>) -> Value {
    let start = match after {
        // The smallest key greater than `after`.
        Some(after) => [after.as_bytes(), &[0]].concat(),
        None => KEY_PREFIX.as_bytes().to_vec(),
    };
    json!({
        "key": b64(&start),
        "range_end": b64(&prefix_end(KEY_PREFIX.as_bytes())),
        "limit": limit,
    })
}

/// An etcd range answer as a page: `more` says whether keys follow the last one.
pub fn etcd_page(body: &Value) -> Result<Page, String> {
    let kvs = match &body["kvs"] {
        Value::Null => &Vec::new(),
        v => v.as_array().ok_or("BAD_ANSWER")?,
    };
    let more = body["more"].as_bool().unwrap_or(false);
    let next = match (more, kvs.last()) {
        (true, Some(last)) => {
            let key = unb64(last["key"].as_str().ok_or("BAD_ANSWER")?)?;
            Some(String::from_utf8(key).map_err(|_| "BAD_ANSWER")?)
        }
        _ => None,
    };
    Ok(Page {
        pairs: kvs.len() as u64,
        next,
    })
}

pub async fn etcd_list_page(
    client: &reqwest::Client,
    url: &str,
    limit: u64,
    after: Option<&str>,
) -> Result<Page, String> {
    let req = client
        .post(format!("{url}/v3/kv/range"))
        .json(&etcd_range_body(limit, after));
    let (status, _, body) = send(req).await?;
    if !status.is_success() {
        return Err(error_code(status, &body));
    }
    etcd_page(&json_body(&body)?)
}

/// How one compare-and-set attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Cas {
    Done,
    /// Someone else wrote the key between the read and the write.
    Conflict,
}

/// The revision of an `ETag` header: `"12"`, `W/"12"` or `12`.
pub fn etag_revision(etag: &str) -> Option<u64> {
    let etag = etag.trim();
    let etag = etag.strip_prefix("W/").unwrap_or(etag);
    etag.trim_matches('"').parse().ok()
}

/// A number that JSON carries as a number or, as etcd's gateway does for 64-bit
/// integers, as a string.
fn number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// The key's revision from a kvstore `GET /kv/{key}` answer: the `ETag`, else the
/// body's `mod_revision`.
pub fn kv_revision(headers: &HeaderMap, body: &[u8]) -> Option<u64> {
    headers
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .and_then(etag_revision)
        .or_else(|| number(&serde_json::from_slice::<Value>(body).ok()?["mod_revision"]))
}

/// The condition header of kvstore's conditional `PUT`: `If-Match: "<rev>"` for a key
/// read at `rev`, `If-None-Match: *` for a key that was missing.
pub fn kv_condition(revision: Option<u64>) -> (&'static str, String) {
    match revision {
        Some(rev) => ("If-Match", format!("\"{rev}\"")),
        None => ("If-None-Match", "*".to_string()),
    }
}

/// The counter a `cas` value holds: its leading digits (0 for none, as in a value
/// the `rw` workload wrote, or for a missing key).
pub fn counter_of(value: &str) -> u64 {
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    value[..digits].parse().unwrap_or(0)
}

/// The value holding counter `n`, padded with `v`s to `size` bytes.
pub fn counter_value(n: u64, size: usize) -> String {
    let mut v = n.to_string();
    if v.len() < size {
        v.extend(std::iter::repeat_n('v', size - v.len()));
    }
    v
}

/// kvstore: `GET /kv/{key}`, then `PUT /kv/{key}` of its counter plus one on the
/// condition that it did not change; 412 is a conflict. So the counters add up to the
/// successful compare-and-sets: an update lost would show as a smaller sum.
pub async fn kv_cas(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    value_size: usize,
) -> Result<Cas, String> {
    let (status, headers, body) = send(client.get(format!("{url}/kv/{key}"))).await?;
    let (revision, counter) = match status.as_u16() {
        200 => {
            let revision = kv_revision(&headers, &body).ok_or("NO_REVISION")?;
            let read = json_body(&body)?;
            (
                Some(revision),
                counter_of(read["value"].as_str().unwrap_or("")),
            )
        }
        404 => (None, 0),
        _ => return Err(error_code(status, &body)),
    };
    let (name, condition) = kv_condition(revision);
    let req = client
        .put(format!("{url}/kv/{key}"))
        .header(name, condition)
        .json(&json!({ "value": counter_value(counter + 1, value_size) }));
    let (status, _, body) = send(req).await?;
    match status.as_u16() {
        200 | 201 => Ok(Cas::Done),
        412 => Ok(Cas::Conflict),
        _ => Err(error_code(status, &body)),
    }
}

/// The key's `mod_revision` and counter from an etcd range answer; 0 and 0 for a
/// missing key (etcd's comparisons take a missing key's `mod_revision` as 0).
pub fn etcd_read(body: &Value) -> Result<(u64, u64), String> {
    match body["kvs"].as_array().and_then(|kvs| kvs.first()) {
        None => Ok((0, 0)),
        Some(kv) => {
            let revision = number(&kv["mod_revision"]).ok_or("BAD_ANSWER")?;
            let value = unb64(kv["value"].as_str().unwrap_or(""))?;
            Ok((revision, counter_of(&String::from_utf8_lossy(&value))))
        }
    }
}

/// etcd's `/v3/kv/txn`: put `value` if the key's `mod_revision` is still `revision`.
pub fn etcd_txn_body(key: &str, revision: u64, value: &str) -> Value {
    json!({
        "compare": [{
            "key": b64(key.as_bytes()),
            "target": "MOD",
            "result": "EQUAL",
            "mod_revision": revision.to_string(),
        }],
        "success": [{ "request_put": { "key": b64(key.as_bytes()), "value": b64(value.as_bytes()) } }],
    })
}

/// Whether an etcd txn answer says its comparisons held (the gateway leaves `false` out).
pub fn etcd_succeeded(body: &Value) -> bool {
    body["succeeded"].as_bool().unwrap_or(false)
}

/// etcd: `/v3/kv/range` of the key, then `/v3/kv/txn` putting its counter plus one
/// if its `mod_revision` is unchanged.
pub async fn etcd_cas(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    value_size: usize,
) -> Result<Cas, String> {
    let req = client
        .post(format!("{url}/v3/kv/range"))
        .json(&json!({ "key": b64(key.as_bytes()) }));
    let (status, _, body) = send(req).await?;
    if !status.is_success() {
        return Err(error_code(status, &body));
    }
    let (revision, counter) = etcd_read(&json_body(&body)?)?;
    let value = counter_value(counter + 1, value_size);
    let req = client
        .post(format!("{url}/v3/kv/txn"))
        .json(&etcd_txn_body(key, revision, &value));
    let (status, _, body) = send(req).await?;
    if !status.is_success() {
        return Err(error_code(status, &body));
    }
    if etcd_succeeded(&json_body(&body)?) {
        Ok(Cas::Done)
    } else {
        Ok(Cas::Conflict)
    }
}

/// kvstore's `POST /txn` that puts every pair (no comparison: it always succeeds).
pub fn kv_put_many_body(pairs: &[(String, &str)]) -> Value {
    let puts: Vec<Value> = pairs
        .iter()
        .map(|(key, value)| json!({ "put": { "key": key, "value": value } }))
        .collect();
    json!({ "success": puts })
}

/// etcd's `/v3/kv/txn` that puts every pair.
pub fn etcd_put_many_body(pairs: &[(String, &str)]) -> Value {
    let puts: Vec<Value> = pairs
        .iter()
        .map(|(key, value)| {
            json!({ "request_put": { "key": b64(key.as_bytes()), "value": b64(value.as_bytes()) } })
        })
        .collect();
    json!({ "success": puts })
}

/// Puts every pair in one transaction: kvstore's `POST /txn`, or etcd's `/v3/kv/txn`.
pub async fn put_many(
    client: &reqwest::Client,
    url: &str,
    etcd: bool,
    pairs: &[(String, &str)],
) -> Result<(), String> {
    let req = if etcd {
        client
            .post(format!("{url}/v3/kv/txn"))
            .json(&etcd_put_many_body(pairs))
    } else {
        client
            .post(format!("{url}/txn"))
            .json(&kv_put_many_body(pairs))
    };
    let (status, _, body) = send(req).await?;
    if !status.is_success() {
        return Err(error_code(status, &body));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn a_prefix_ends_where_its_last_byte_is_one_higher() {
        assert_eq!(prefix_end(b"bench-"), b"bench.".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn etcd_pages_start_after_the_last_key_and_stop_without_more() {
        let first = etcd_range_body(100, None);
        assert_eq!(first["key"], b64(b"bench-"));
        assert_eq!(first["range_end"], b64(b"bench."));
        assert_eq!(first["limit"], 100);
        let next = etcd_range_body(100, Some("bench-42"));
        assert_eq!(next["key"], b64(b"bench-42\0"));

        let body = json!({"kvs": [{"key": b64(b"bench-1")}, {"key": b64(b"bench-2")}], "more": true, "count": "9"});
        assert_eq!(
            etcd_page(&body).unwrap(),
            Page {
                pairs: 2,
                next: Some("bench-2".into())
            }
        );
        let last = json!({"kvs": [{"key": b64(b"bench-9")}], "count": "1"});
        assert_eq!(
            etcd_page(&last).unwrap(),
            Page {
                pairs: 1,
                next: None
            }
        );
        // An empty range: the gateway leaves `kvs` out.
        assert_eq!(
            etcd_page(&json!({"header": {}})).unwrap(),
            Page {
                pairs: 0,
                next: None
            }
        );
        assert!(etcd_page(&json!({"kvs": [{"key": "%%"}], "more": true})).is_err());
    }

    #[test]
    fn kvstore_pages_follow_next() {
        let body = json!({"kvs": [{"key": "bench-1", "value": "v"}], "count": 1, "next": "bench-1", "node_id": 1});
        assert_eq!(
            kv_page(&body).unwrap(),
            Page {
                pairs: 1,
                next: Some("bench-1".into())
            }
        );
        let last = json!({"kvs": [], "count": 0, "node_id": 1});
        assert_eq!(
            kv_page(&last).unwrap(),
            Page {
                pairs: 0,
                next: None
            }
        );
        assert!(kv_page(&json!({"code": "X"})).is_err());
    }

    #[test]
    fn the_revision_comes_from_the_etag_else_the_body() {
        assert_eq!(etag_revision("\"17\""), Some(17));
        assert_eq!(etag_revision("W/\"17\""), Some(17));
        assert_eq!(etag_revision("17"), Some(17));
        assert_eq!(etag_revision("\"abc\""), None);

        let mut headers = HeaderMap::new();
        headers.insert(ETAG, HeaderValue::from_static("\"8\""));
        assert_eq!(kv_revision(&headers, br#"{"mod_revision": 5}"#), Some(8));
        let none = HeaderMap::new();
        assert_eq!(kv_revision(&none, br#"{"mod_revision": 5}"#), Some(5));
        assert_eq!(kv_revision(&none, br#"{"value": "x"}"#), None);
    }

    #[test]
    fn a_cas_value_is_a_counter_padded_to_the_value_size() {
        assert_eq!(counter_value(12, 5), "12vvv");
        assert_eq!(counter_value(123_456, 3), "123456");
        assert_eq!(counter_of("12vvv"), 12);
        assert_eq!(counter_of(&counter_value(99, 100)), 99);
        assert_eq!(counter_of("vvvv"), 0);
        assert_eq!(counter_of(""), 0);
    }

    #[test]
    fn a_missing_key_is_created_only_if_still_missing() {
        assert_eq!(kv_condition(Some(12)), ("If-Match", "\"12\"".to_string()));
        assert_eq!(kv_condition(None), ("If-None-Match", "*".to_string()));
    }

    #[test]
    fn etcd_compares_the_mod_revision_read() {
        let read = json!({"kvs": [{"key": b64(b"k"), "mod_revision": "31", "version": "4", "value": b64(b"7vvv")}], "count": "1"});
        assert_eq!(etcd_read(&read), Ok((31, 7)));
        assert_eq!(etcd_read(&json!({"header": {}})), Ok((0, 0)));
        assert!(etcd_read(&json!({"kvs": [{"key": "x"}]})).is_err());

        let txn = etcd_txn_body("k", 31, "v");
        assert_eq!(txn["compare"][0]["target"], "MOD");
        assert_eq!(txn["compare"][0]["result"], "EQUAL");
        assert_eq!(txn["compare"][0]["mod_revision"], "31");
        assert_eq!(txn["compare"][0]["key"], b64(b"k"));
        assert_eq!(txn["success"][0]["request_put"]["value"], b64(b"v"));
        assert!(etcd_succeeded(&json!({"succeeded": true})));
        assert!(!etcd_succeeded(&json!({"header": {}})));
    }

    #[test]
    fn a_batch_puts_every_pair_unconditionally() {
        let pairs = [("bench-1".to_string(), "ab"), ("bench-2".to_string(), "c")];
        let kv = kv_put_many_body(&pairs);
        assert_eq!(kv["success"][1]["put"]["key"], "bench-2");
        assert_eq!(kv["success"][0]["put"]["value"], "ab");
        assert_eq!(kv["success"].as_array().unwrap().len(), 2);
        assert!(kv.get("compare").is_none());
        let etcd = etcd_put_many_body(&pairs);
        assert_eq!(etcd["success"][0]["request_put"]["key"], b64(b"bench-1"));
        assert_eq!(etcd["success"][1]["request_put"]["value"], b64(b"c"));
    }
}
