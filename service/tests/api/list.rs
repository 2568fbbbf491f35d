//! `GET /kv` (ordered listing, a page at a time) and `DELETE /kv` (range deletes).

use serde_json::Value;

use crate::helpers::{error, json, spawn_app, Backend, TestApp};

impl TestApp {
    pub async fn list(&self, query: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .get(self.url("/kv"))
            .query(query)
            .send()
            .await
            .expect("GET /kv")
    }

    pub async fn delete_range(&self, query: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .delete(self.url("/kv"))
            .query(query)
            .send()
            .await
            .expect("DELETE /kv")
    }
}

/// Keys inside `app/` in an order where byte order differs from a linguistic one
/// (upper case first, `é` after `z`), and keys just outside it on both sides.
const INSIDE: &[&str] = &[
    "app/a",
    "app/B",
    "app/b",
    "app/b/1",
    "app/b/2",
    "app/c",
    "app/Z",
    "app/z",
    "app/\u{e9}",
    "app/m",
    "app/n",
    "app/x-1",
    "app/x-2",
];
const OUTSIDE: &[&str] = &["ap", "app", "app0", "apq", "b"];

async fn put_all(app: &TestApp, keys: &[&str]) {
    for key in keys {
        json(app.put(key, &format!("value of {key}")).await, 201).await;
    }
}

fn sorted(keys: &[&str]) -> Vec<String> {
    let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    keys.sort();
    keys
}

/// Walks every page of a range with `limit`, following `next` as `after`; returns the
/// keys in the order they came, checking each page's shape on the way.
async fn walk(app: &TestApp, range: &[(&str, &str)], limit: usize) -> Vec<String> {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    let limit_text = limit.to_string();
    for _ in 0..100 {
        let mut query: Vec<(&str, &str)> = range.to_vec();
        query.push(("limit", &limit_text));
        if let Some(after) = &after {
            query.push(("after", after));
        }
        let page = json(app.list(&query).await, 200).await;
        let kvs = page["kvs"].as_array().expect("kvs");
        assert!(kvs.len() <= limit, "page over the limit: {page}");
        assert_eq!(page["count"], kvs.len(), "{page}");
        assert_eq!(page["node_id"], 1);
        for kv in kvs {
            let key = kv["key"].as_str().expect("key").to_string();
            assert_eq!(kv["value"], format!("value of {key}"), "{page}");
            keys.push(key);
        }
        match page.get("next") {
            None => return keys,
            Some(next) => {
                assert_eq!(kvs.last().map(|kv| &kv["key"]), Some(next), "{page}");
                after = Some(next.as_str().expect("next").to_string());
            }
        }
    }
    panic!("more than 100 pages")
}

async fn pages_cover_a_prefix_once_in_byte_order(backend: Backend) {
    let app = spawn_app(backend).await;
    put_all(&app, INSIDE).await;
    put_all(&app, OUTSIDE).await;
    let expected = sorted(INSIDE);
    for limit in [1, 3, 4, 13, 100] {
        let keys = walk(&app, &[("prefix", "app/")], limit).await;
        assert_eq!(keys, expected, "limit {limit}");
    }
    // Without a prefix, every key.
    let all: Vec<&str> = INSIDE.iter().chain(OUTSIDE).copied().collect();
    assert_eq!(walk(&app, &[], 5).await, sorted(&all));
    app.stop().await;
}

async fn pages_cover_start_to_end(backend: Backend) {
    let app = spawn_app(backend).await;
    put_all(&app, INSIDE).await;
    put_all(&app, OUTSIDE).await;
    let all: Vec<&str> = INSIDE.iter().chain(OUTSIDE).copied().collect();
    let in_range = |start: &str, end: Option<&str>| -> Vec<String> {
        sorted(&all)
            .into_iter()
            .filter(|k| k.as_str() >= start && end.is_none_or(|e| k.as_str() < e))
            .collect()
    };
    let keys = walk(&app, &[("start", "app/b"), ("end", "app/x-2")], 2).await;
    assert_eq!(keys, in_range("app/b", Some("app/x-2")));
    let keys = walk(&app, &[("start", "app/n")], 3).await;
    assert_eq!(keys, in_range("app/n", None));
    let keys = walk(&app, &[("end", "app/")], 2).await;
    assert_eq!(keys, in_range("", Some("app/")));
    // An end at or before the start: nothing.
    let page = json(app.list(&[("start", "b"), ("end", "a")]).await, 200).await;
    assert_eq!(page["kvs"], serde_json::json!([]));
    assert_eq!(page["count"], 0);
    assert!(page.get("next").is_none(), "{page}");
    app.stop().await;
}

async fn the_limit_is_1_to_10000_and_100_by_default(backend: Backend) {
    let app = spawn_app(backend).await;
    let keys: Vec<String> = (0..101).map(|i| format!("k/{i:03}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    put_all(&app, &keys).await;
    let page = json(app.list(&[("prefix", "k/")]).await, 200).await;
    assert_eq!(page["count"], 100);
    assert_eq!(page["next"], "k/099");
    let page = json(app.list(&[("prefix", "k/"), ("limit", "10000")]).await, 200).await;
    assert_eq!(page["count"], 101);
    assert!(page.get("next").is_none(), "{page}");
    for bad in ["0", "10001", "-1", "ten", "18446744073709551616"] {
        let body = error(
            app.list(&[("prefix", "k/"), ("limit", bad)]).await,
            400,
            "INVALID_PARAMETER",
        )
        .await;
        assert!(
            body["error"].as_str().unwrap().contains("limit"),
            "limit={bad}: {body}"
        );
    }
    app.stop().await;
}

async fn keys_only_and_count_only(backend: Backend) {
    let app = spawn_app(backend).await;
    put_all(&app, INSIDE).await;
    put_all(&app, OUTSIDE).await;
    let page = json(
        app.list(&[("prefix", "app/b"), ("keys_only", "true")])
            .await,
        200,
    )
    .await;
    let kvs = page["kvs"].as_array().unwrap();
    let keys: Vec<&str> = kvs.iter().map(|kv| kv["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["app/b", "app/b/1", "app/b/2"]);
    assert!(kvs
        .iter()
        .all(|kv| kv.get("value").is_none() && kv["version"] == 1));
    // The whole range, whatever the limit.
    assert_eq!(
        count(
            &app,
            &[("prefix", "app/"), ("count_only", "true"), ("limit", "2")]
        )
        .await,
        INSIDE.len() as u64
    );
    assert_eq!(
        count(&app, &[("count_only", "true")]).await,
        (INSIDE.len() + OUTSIDE.len()) as u64
    );
    assert_eq!(
        count(
            &app,
            &[("start", "app/b"), ("end", "app/c"), ("count_only", "true")]
        )
        .await,
        3
    );
    // A deleted key no longer counts; a new one does.
    json(app.delete("app/b/1").await, 200).await;
    json(app.put("app/b/3", "x").await, 201).await;
    assert_eq!(
        count(&app, &[("prefix", "app/b/"), ("count_only", "true")]).await,
        2
    );
    for bad in [
        &[("count_only", "true"), ("after", "a")][..],
        &[("count_only", "true"), ("keys_only", "true")][..],
        &[("count_only", "maybe")][..],
    ] {
        error(app.list(bad).await, 400, "INVALID_PARAMETER").await;
    }
    app.stop().await;
}

/// The `count` of a `count_only` answer, checking it carries no pairs.
async fn count(app: &TestApp, query: &[(&str, &str)]) -> u64 {
    let body: Value = json(app.list(query).await, 200).await;
    assert_eq!(body["kvs"], serde_json::json!([]), "{body}");
    assert!(body.get("next").is_none(), "{body}");
    body["count"].as_u64().expect("count")
}

async fn stale_listing_reads_the_local_copy(backend: Backend) {
    let app = spawn_app(backend).await;
    put_all(&app, INSIDE).await;
    let stale = json(
        app.list(&[("prefix", "app/"), ("consistency", "stale")])
            .await,
        200,
    )
    .await;
    let linearizable = json(
        app.list(&[("prefix", "app/"), ("consistency", "linearizable")])
            .await,
        200,
    )
    .await;
    assert_eq!(stale["kvs"], linearizable["kvs"]);
    assert_eq!(stale["count"], INSIDE.len());
    error(
        app.list(&[("consistency", "sometimes")]).await,
        400,
        "INVALID_PARAMETER",
    )
    .await;
    app.stop().await;
}

async fn a_prefix_and_bounds_do_not_mix(backend: Backend) {
    let app = spawn_app(backend).await;
    for bad in [
        &[("prefix", "a"), ("start", "a")][..],
        &[("prefix", "a"), ("end", "b")][..],
    ] {
        error(app.list(bad).await, 400, "INVALID_PARAMETER").await;
        error(app.delete_range(bad).await, 400, "INVALID_PARAMETER").await;
    }
    app.stop().await;
}

async fn delete_by_prefix_answers_the_count_and_the_keys_are_gone(backend: Backend) {
    let app = spawn_app(backend).await;
    put_all(&app, INSIDE).await;
    put_all(&app, OUTSIDE).await;
    let body = json(app.delete_range(&[("prefix", "app/b")]).await, 200).await;
    assert_eq!(body["deleted"], 3, "{body}");
    assert_eq!(body["message"], "Keys deleted successfully");
    assert_eq!(body["node_id"], 1);
    for key in ["app/b", "app/b/1", "app/b/2"] {
        error(app.get(key).await, 404, "KEY_NOT_FOUND").await;
    }
    let body = json(app.delete_range(&[("prefix", "app/")]).await, 200).await;
    assert_eq!(body["deleted"], INSIDE.len() - 3, "{body}");
    let left = walk(&app, &[], 100).await;
    assert_eq!(
        left,
        sorted(OUTSIDE),
        "only the keys outside the prefix are left"
    );
    // Nothing left to delete: 0, not an error.
    let body = json(app.delete_range(&[("prefix", "app/")]).await, 200).await;
    assert_eq!(body["deleted"], 0);
    // start and end.
    let body = json(
        app.delete_range(&[("start", "app"), ("end", "apq")]).await,
        200,
    )
    .await;
    assert_eq!(body["deleted"], 2, "app and app0: {body}");
    assert_eq!(walk(&app, &[], 100).await, sorted(&["ap", "apq", "b"]));
    // Values written after a range delete are there.
    json(app.put("app/new", "x").await, 201).await;
    assert_eq!(json(app.get("app/new").await, 200).await["value"], "x");
    app.stop().await;
}

async fn a_range_delete_needs_a_prefix_or_a_start(backend: Backend) {
    let app = spawn_app(backend).await;
    put_all(&app, OUTSIDE).await;
    for bad in [&[][..], &[("prefix", "")][..], &[("end", "z")][..]] {
        error(app.delete_range(bad).await, 400, "INVALID_PARAMETER").await;
    }
    assert_eq!(
        walk(&app, &[], 100).await,
        sorted(OUTSIDE),
        "nothing deleted"
    );
    // An explicit empty start, deliberately: every key.
    let body = json(app.delete_range(&[("start", "")]).await, 200).await;
    assert_eq!(body["deleted"], OUTSIDE.len());
    assert!(walk(&app, &[], 100).await.is_empty());
    app.stop().await;
}

/// A page of the largest values ends early, by size, however high the limit: it holds
/// the pairs up to the one that brings it to 4 MiB, and `next` goes on from there.
async fn a_page_of_large_values_ends_at_4_mib(backend: Backend) {
    const MAX_PAGE_BYTES: usize = 4 << 20;
    let app = spawn_app(backend).await;
    let value = "v".repeat(1_000_000);
    let keys: Vec<String> = (0..7).map(|i| format!("big/{i}")).collect();
    for key in &keys {
        json(app.put(key, &value).await, 201).await;
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut query = vec![("prefix", "big/"), ("limit", "10000")];
        if let Some(after) = &after {
            query.push(("after", after));
        }
        let page = json(app.list(&query).await, 200).await;
        pages += 1;
        let kvs = page["kvs"].as_array().expect("kvs");
        let sizes: Vec<usize> = kvs
            .iter()
            .map(|kv| kv["key"].as_str().unwrap().len() + kv["value"].as_str().unwrap().len())
            .collect();
        let before_last: usize = sizes.iter().rev().skip(1).sum();
        assert!(before_last < MAX_PAGE_BYTES, "page past 4 MiB: {sizes:?}");
        seen.extend(kvs.iter().map(|kv| kv["key"].as_str().unwrap().to_string()));
        match page.get("next") {
            Some(next) => {
                assert!(!kvs.is_empty() && sizes.iter().sum::<usize>() >= MAX_PAGE_BYTES);
                after = Some(next.as_str().unwrap().to_string());
            }
            None => break,
        }
        assert!(pages < 10, "too many pages");
    }
    assert_eq!(seen, keys, "every key once, in order");
    assert!(pages >= 2, "7 MB of values must take more than one page");
    app.stop().await;
}

crate::backend_tests!(
    a_page_of_large_values_ends_at_4_mib,
    pages_cover_a_prefix_once_in_byte_order,
    pages_cover_start_to_end,
    the_limit_is_1_to_10000_and_100_by_default,
    keys_only_and_count_only,
    stale_listing_reads_the_local_copy,
    a_prefix_and_bounds_do_not_mix,
    delete_by_prefix_answers_the_count_and_the_keys_are_gone,
    a_range_delete_needs_a_prefix_or_a_start,
);
