//! Exact size limits and one byte over them.

use std::time::Duration;

use crate::helpers::{error, json, spawn_app, spawn_app_with, Backend};

const MAX_KEY: usize = 1024;
const MAX_VALUE: usize = 1024 * 1024;

async fn key_of_exactly_the_limit_is_accepted_and_one_byte_more_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = "k".repeat(MAX_KEY);
    let body = json(app.put(&key, "v").await, 201).await;
    assert_eq!(body["key"].as_str().unwrap().len(), MAX_KEY);
    assert_eq!(json(app.get(&key).await, 200).await["value"], "v");

    let too_long = "k".repeat(MAX_KEY + 1);
    error(app.put(&too_long, "v").await, 400, "KEY_TOO_LARGE").await;
    error(app.get(&too_long).await, 400, "KEY_TOO_LARGE").await;
    error(app.delete(&too_long).await, 400, "KEY_TOO_LARGE").await;
    app.stop().await;
}

async fn key_limit_counts_utf8_bytes(backend: Backend) {
    let app = spawn_app(backend).await;
    // "é" is 2 bytes: 512 of them is exactly 1024 bytes.
    let key = "é".repeat(MAX_KEY / 2);
    json(app.put(&key, "v").await, 201).await;
    let over = format!("{key}a");
    error(app.put(&over, "v").await, 400, "KEY_TOO_LARGE").await;
    app.stop().await;
}

async fn value_of_exactly_the_limit_is_accepted_and_one_byte_more_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let value = "v".repeat(MAX_VALUE);
    json(app.put("big", &value).await, 201).await;
    let body = json(app.get("big").await, 200).await;
    assert_eq!(body["value"].as_str().unwrap().len(), MAX_VALUE);

    let over = "v".repeat(MAX_VALUE + 1);
    error(app.put("big2", &over).await, 413, "VALUE_TOO_LARGE").await;
    error(app.get("big2").await, 404, "KEY_NOT_FOUND").await;
    app.stop().await;
}

async fn limits_are_configurable(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.server.max_key_bytes = 4;
        s.server.max_value_bytes = 8;
    })
    .await;
    json(app.put("abcd", "12345678").await, 201).await;
    error(app.put("abcde", "v").await, 400, "KEY_TOO_LARGE").await;
    error(app.put("k", "123456789").await, 413, "VALUE_TOO_LARGE").await;
    app.stop().await;
}

async fn an_oversized_body_is_refused_by_its_declared_length(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.server.max_value_bytes = 8).await;
    // Limit for an 8-byte value is 8 * 6 + 4096 bytes of body.
    let body = format!("{{\"value\": \"{}\"}}", "x".repeat(8 * 6 + 4096));
    error(
        app.put_raw("k", Some("application/json"), body).await,
        413,
        "VALUE_TOO_LARGE",
    )
    .await;
    app.stop().await;
}

async fn an_oversized_chunked_body_is_cut_off(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = spawn_app_with(backend, |s| s.server.max_value_bytes = 8).await;
    // No Content-Length: a chunked body one byte over the limit (8 * 6 + 4096), and no
    // end. The server must answer from what it has, without waiting for the rest. (A
    // raw socket: an HTTP client may fail writing the rest and never show the answer.)
    let limit = 8 * 6 + 4096;
    let addr = app.address.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /kv/k HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        limit + 1
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b' '; limit + 1]).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("an answer before the body ends")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response.contains("\"code\":\"VALUE_TOO_LARGE\""),
        "{response}"
    );
    app.stop().await;
}

crate::backend_tests!(
    key_of_exactly_the_limit_is_accepted_and_one_byte_more_is_refused,
    key_limit_counts_utf8_bytes,
    value_of_exactly_the_limit_is_accepted_and_one_byte_more_is_refused,
    limits_are_configurable,
    an_oversized_body_is_refused_by_its_declared_length,
    an_oversized_chunked_body_is_cut_off,
);
