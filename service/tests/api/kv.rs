use serde_json::json;

use crate::helpers::{error, json, spawn_app, Backend};

async fn readme_examples_return_the_documented_json(backend: Backend) {
    let app = spawn_app(backend).await;

    let body = json(app.put("user:1", "John Doe").await, 201).await;
    assert_eq!(body["key"], "user:1");
    assert_eq!(body["value"], "John Doe");
    assert_eq!(body["message"], "Key-value pair stored successfully");

    let body = json(app.get("user:1").await, 200).await;
    assert_eq!(body["key"], "user:1");
    assert_eq!(body["value"], "John Doe");

    let body = json(app.delete("user:1").await, 200).await;
    assert_eq!(body["key"], "user:1");
    assert_eq!(body["message"], "Key deleted successfully");

    let body = error(app.get("user:1").await, 404, "KEY_NOT_FOUND").await;
    assert_eq!(
        body,
        json!({"error": "Key not found", "code": "KEY_NOT_FOUND", "key": "user:1"})
    );
    app.stop().await;
}

async fn responses_name_the_serving_node(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = json(app.put("k", "v").await, 201).await;
    assert_eq!(body["node_id"], 1);
    let body = json(app.get("k").await, 200).await;
    assert_eq!(body["node_id"], 1);
    app.stop().await;
}

async fn put_overwrites(backend: Backend) {
    let app = spawn_app(backend).await;
    json(app.put("k", "one").await, 201).await;
    json(app.put("k", "two").await, 201).await;
    assert_eq!(json(app.get("k").await, 200).await["value"], "two");
    app.stop().await;
}

async fn delete_of_missing_key_is_404_with_the_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = error(app.delete("ghost").await, 404, "KEY_NOT_FOUND").await;
    assert_eq!(body["key"], "ghost");
    assert_eq!(body["error"], "Key not found");
    app.stop().await;
}

async fn keys_may_contain_slashes(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = json(app.put("app/db/host", "db1").await, 201).await;
    assert_eq!(body["key"], "app/db/host");
    // The same key, escaped, is the same key.
    let body = json(app.get("app%2Fdb%2Fhost").await, 200).await;
    assert_eq!(body["key"], "app/db/host");
    assert_eq!(body["value"], "db1");
    // A trailing slash is part of the key.
    json(app.put("dir/", "d").await, 201).await;
    assert_eq!(json(app.get("dir/").await, 200).await["value"], "d");
    error(app.get("dir").await, 404, "KEY_NOT_FOUND").await;
    json(app.delete("app/db/host").await, 200).await;
    error(app.get("app/db/host").await, 404, "KEY_NOT_FOUND").await;
    app.stop().await;
}

async fn percent_escapes_are_decoded(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = json(app.put("hello%20world", "v").await, 201).await;
    assert_eq!(body["key"], "hello world");
    let body = json(app.put("100%25", "pct").await, 201).await;
    assert_eq!(body["key"], "100%");
    assert_eq!(json(app.get("100%25").await, 200).await["value"], "pct");
    app.stop().await;
}

async fn non_ascii_keys_and_values_round_trip(backend: Backend) {
    let app = spawn_app(backend).await;
    // reqwest percent-encodes the non-ASCII path as UTF-8.
    let body = json(app.put("ключ/日本", "значение ✓").await, 201).await;
    assert_eq!(body["key"], "ключ/日本");
    let body = json(
        app.get("%D0%BA%D0%BB%D1%8E%D1%87/%E6%97%A5%E6%9C%AC").await,
        200,
    )
    .await;
    assert_eq!(body["value"], "значение ✓");
    app.stop().await;
}

crate::backend_tests!(
    readme_examples_return_the_documented_json,
    responses_name_the_serving_node,
    put_overwrites,
    delete_of_missing_key_is_404_with_the_key,
    keys_may_contain_slashes,
    percent_escapes_are_decoded,
    non_ascii_keys_and_values_round_trip,
);
