//! Revisions on every key, conditional writes (`If-Match`, `If-None-Match`) and
//! transactions (`POST /txn`).

use serde_json::{json, Value};

use crate::helpers::{error, json, spawn_app, Backend, TestApp};

impl TestApp {
    /// A PUT with extra headers and fields in its body.
    pub async fn put_with(
        &self,
        key: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self.client.put(self.url(&format!("/kv/{key}"))).json(&body);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send().await.expect("PUT")
    }

    pub async fn txn(&self, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/txn"))
            .json(&body)
            .send()
            .await
            .expect("POST /txn")
    }
}

/// The `ETag` header, unquoted, as a number.
fn etag(resp: &reqwest::Response) -> u64 {
    let tag = resp.headers()["etag"].to_str().unwrap();
    tag.trim_matches('"').parse().expect("a quoted revision")
}

fn revisions(body: &Value) -> (u64, u64, u64) {
    (
        body["create_revision"].as_u64().unwrap(),
        body["mod_revision"].as_u64().unwrap(),
        body["version"].as_u64().unwrap(),
    )
}

async fn revisions_count_writes_and_start_again_after_a_delete(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app.put("a", "1").await;
    let tag = etag(&first);
    let (create, modified, version) = revisions(&json(first, 201).await);
    assert_eq!((modified, version), (create, 1), "a new key");
    assert_eq!(tag, modified);

    let second = json(app.put("a", "2").await, 201).await;
    let (create2, modified2, version2) = revisions(&second);
    assert_eq!(create2, create, "creation stays");
    assert!(modified2 > modified, "revisions increase");
    assert_eq!(version2, 2);

    let read = app.get("a").await;
    assert_eq!(etag(&read), modified2);
    assert_eq!(revisions(&json(read, 200).await), (create, modified2, 2));

    let deleted = json(app.delete("a").await, 200).await;
    let delete_revision = deleted["revision"].as_u64().unwrap();
    assert!(delete_revision > modified2);

    let again = json(app.put("a", "3").await, 201).await;
    let (create3, modified3, version3) = revisions(&again);
    assert!(create3 > delete_revision, "a new life");
    assert_eq!((modified3, version3), (create3, 1));

    // Listings carry them too.
    let page = json(app.list(&[("prefix", "a")]).await, 200).await;
    assert_eq!(revisions(&page["kvs"][0]), (create3, modified3, 1));
}

async fn if_match_writes_only_over_the_revision_it_names(backend: Backend) {
    let app = spawn_app(backend).await;
    let rev = etag(&app.put("k", "1").await);
    let stale = format!("\"{}\"", rev - 1);
    let current = format!("\"{rev}\"");

    let refused = app
        .put_with("k", json!({"value": "x"}), &[("If-Match", &stale)])
        .await;
    let body = error(refused, 412, "PRECONDITION_FAILED").await;
    assert_eq!(body["key"], "k");
    assert_eq!(body["current"]["exists"], true);
    assert_eq!(body["current"]["mod_revision"], rev);
    assert_eq!(
        json(app.get("k").await, 200).await["value"],
        "1",
        "unchanged"
    );

    let written = app
        .put_with("k", json!({"value": "2"}), &[("If-Match", &current)])
        .await;
    let next = etag(&written);
    assert!(next > rev);
    // The same revision again: someone (this client) wrote since.
    let again = app
        .put_with("k", json!({"value": "3"}), &[("If-Match", &current)])
        .await;
    error(again, 412, "PRECONDITION_FAILED").await;

    // `*`: only an existing key; `If-None-Match: *`: only a new one.
    let missing = app
        .put_with("new", json!({"value": "x"}), &[("If-Match", "*")])
        .await;
    let body = error(missing, 412, "PRECONDITION_FAILED").await;
    assert_eq!(body["current"]["exists"], false);
    assert_eq!(body["current"]["mod_revision"], 0);
    let create = app
        .put_with("new", json!({"value": "x"}), &[("If-None-Match", "*")])
        .await;
    assert_eq!(create.status(), 201);
    let twice = app
        .put_with("new", json!({"value": "y"}), &[("If-None-Match", "*")])
        .await;
    error(twice, 412, "PRECONDITION_FAILED").await;

    // Conditional deletes.
    let stale_delete = app
        .client
        .delete(app.url("/kv/k"))
        .header("If-Match", &current)
        .send()
        .await
        .unwrap();
    error(stale_delete, 412, "PRECONDITION_FAILED").await;
    let delete = app
        .client
        .delete(app.url("/kv/k"))
        .header("If-Match", format!("\"{next}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 200);

    // Headers that say nothing usable.
    for (name, value) in [
        ("If-Match", "W/\"1\""),
        ("If-Match", "x"),
        ("If-None-Match", "\"1\""),
    ] {
        let resp = app
            .put_with("k", json!({"value": "x"}), &[(name, value)])
            .await;
        error(resp, 400, "INVALID_PARAMETER").await;
    }
}

/// Compare-and-set under contention: every increment lands exactly once.
async fn concurrent_increments_with_if_match_lose_none(backend: Backend) {
    let app = std::sync::Arc::new(spawn_app(backend).await);
    assert_eq!(app.put("counter", "0").await.status(), 201);
    let (clients, each) = (4, 15);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..each {
                loop {
                    let read = app.get("counter").await;
                    let tag = read.headers()["etag"].to_str().unwrap().to_string();
                    let n: u64 = json(read, 200).await["value"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    let body = json!({"value": (n + 1).to_string()});
                    let resp = app.put_with("counter", body, &[("If-Match", &tag)]).await;
                    match resp.status().as_u16() {
                        201 => break,
                        412 => conflicts += 1,
                        other => panic!("unexpected {other}"),
                    }
                }
            }
            conflicts
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let body = json(app.get("counter").await, 200).await;
    assert_eq!(body["value"], (clients * each).to_string());
    assert_eq!(body["version"], clients * each + 1);
}

async fn revisions_survive_a_restart(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put("k", "1").await;
    let (create, modified, version) = revisions(&json(app.put("k", "2").await, 201).await);
    let app = app.restart().await;
    assert_eq!(
        revisions(&json(app.get("k").await, 200).await),
        (create, modified, version)
    );
    let (create2, _, version2) = revisions(&json(app.put("k", "3").await, 201).await);
    assert_eq!((create2, version2), (create, 3));
}

async fn a_transaction_runs_one_branch_at_one_revision(backend: Backend) {
    let app = spawn_app(backend).await;
    let rev = etag(&app.put("lock", "a").await);
    app.put("cfg/1", "x").await;
    app.put("cfg/2", "y").await;
    let txn = |rev: u64| {
        json!({
            "compare": [{"key": "lock", "target": "mod_revision", "op": "=", "value": rev}],
            "success": [
                {"put": {"key": "lock", "value": "b"}},
                {"put": {"key": "other", "value": "c"}},
                {"get": {"key": "other"}},
                {"delete": {"key": "missing"}},
                {"range": {"prefix": "cfg/", "limit": 1}}
            ],
            "failure": [{"get": {"key": "lock"}}, {"get": {"key": "missing"}}]
        })
    };
    let body = json(app.txn(txn(rev)).await, 200).await;
    assert_eq!(body["succeeded"], true);
    let revision = body["revision"].as_u64().unwrap();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["put"]["mod_revision"], revision);
    assert_eq!(results[0]["put"]["version"], 2);
    assert_eq!(results[1]["put"]["create_revision"], revision);
    assert_eq!(
        results[2]["get"]["value"], "c",
        "later operations see earlier ones"
    );
    assert_eq!(results[3]["delete"]["deleted"], false);
    assert_eq!(results[4]["range"]["kvs"][0]["key"], "cfg/1");
    assert_eq!(results[4]["range"]["more"], true);
    assert_eq!(
        json(app.get("lock").await, 200).await["mod_revision"],
        revision
    );

    // The same comparison fails now: the failure branch runs and writes nothing.
    let body = json(app.txn(txn(rev)).await, 200).await;
    assert_eq!(body["succeeded"], false);
    assert_eq!(body["results"][0]["get"]["value"], "b");
    assert_eq!(body["results"][1]["get"]["found"], false);
    assert_eq!(body["results"][1]["get"]["version"], 0);

    // A lock: create only if absent, on every comparison target.
    let lock = json!({
        "compare": [
            {"key": "l", "target": "create_revision", "op": "=", "value": 0},
            {"key": "lock", "target": "value", "op": "=", "value": "b"},
            {"key": "lock", "target": "version", "op": ">", "value": 1},
            {"key": "lock", "target": "lease", "op": "=", "value": 0},
            {"key": "lock", "target": "mod_revision", "op": "!=", "value": 0},
            {"key": "lock", "target": "create_revision", "op": "<", "value": revision}
        ],
        "success": [{"put": {"key": "l", "value": "me"}}]
    });
    assert_eq!(
        json(app.txn(lock.clone()).await, 200).await["succeeded"],
        true
    );
    assert_eq!(json(app.txn(lock).await, 200).await["succeeded"], false);
}

async fn a_transaction_is_checked_before_it_is_proposed(backend: Backend) {
    let app = spawn_app(backend).await;
    let put = |key: &str| json!({"put": {"key": key, "value": "v"}});
    let invalid = [
        json!({"success": [{"put": {"key": "a", "value": "1"}, "get": {"key": "a"}}]}),
        json!({"success": [{}]}),
        json!({"success": [put("a"), put("a")]}),
        json!({"success": [put("a/1"), {"range": {"prefix": "a/"}}]}),
        json!({"success": [{"range": {"prefix": "a/", "limit": 1001}}]}),
        json!({"compare": [{"key": "a", "target": "version", "op": "=", "value": "1"}]}),
        json!({"compare": [{"key": "a", "target": "value", "op": "=", "value": 1}]}),
        json!({"compare": vec![json!({"key": "a", "target": "version", "op": "=", "value": 0}); 129]}),
    ];
    for body in invalid {
        error(app.txn(body.clone()).await, 400, "INVALID_TXN").await;
    }
    let bad_op = json!({"compare": [{"key": "a", "target": "version", "op": "~", "value": 0}]});
    error(app.txn(bad_op).await, 400, "INVALID_JSON").await;
    let empty = json!({"success": [{"put": {"key": "a", "value": ""}}]});
    error(app.txn(empty).await, 400, "EMPTY_VALUE").await;
    let no_key = json!({"success": [{"get": {"key": ""}}]});
    error(app.txn(no_key).await, 400, "INVALID_KEY").await;
    // Nothing was written by any of them.
    assert_eq!(app.get("a").await.status(), 404);
    // An empty transaction is valid: it succeeds and does nothing.
    assert_eq!(json(app.txn(json!({})).await, 200).await["succeeded"], true);
}

crate::backend_tests!(
    revisions_count_writes_and_start_again_after_a_delete,
    if_match_writes_only_over_the_revision_it_names,
    concurrent_increments_with_if_match_lose_none,
    revisions_survive_a_restart,
    a_transaction_runs_one_branch_at_one_revision,
    a_transaction_is_checked_before_it_is_proposed,
);
