//! Every client-visible error is JSON with its documented code and status.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{error, spawn_app, spawn_app_with, Backend};

async fn empty_body_is_empty_body(backend: Backend) {
    let app = spawn_app(backend).await;
    error(
        app.put_raw("k", Some("application/json"), "").await,
        400,
        "EMPTY_BODY",
    )
    .await;
    error(
        app.put_raw("k", Some("application/json"), "  \n").await,
        400,
        "EMPTY_BODY",
    )
    .await;
    app.stop().await;
}

async fn empty_value_is_empty_value(backend: Backend) {
    let app = spawn_app(backend).await;
    error(app.put("k", "").await, 400, "EMPTY_VALUE").await;
    app.stop().await;
}

async fn malformed_or_mistyped_json_is_invalid_json(backend: Backend) {
    let app = spawn_app(backend).await;
    for body in [
        "{bad",
        "[1,2]",
        "\"just a string\"",
        "{\"value\": 42}",
        "{\"value\": null}",
        "{\"other\": \"x\"}",
        "{\"value\": \"x\"} trailing",
    ] {
        error(
            app.put_raw("k", Some("application/json"), body).await,
            400,
            "INVALID_JSON",
        )
        .await;
    }
    // Invalid UTF-8 inside the JSON text.
    let bytes: Vec<u8> = b"{\"value\": \"\xff\xfe\"}".to_vec();
    error(
        app.put_raw("k", Some("application/json"), bytes).await,
        400,
        "INVALID_JSON",
    )
    .await;
    app.stop().await;
}

async fn unknown_fields_are_ignored(backend: Backend) {
    let app = spawn_app(backend).await;
    let resp = app
        .put_raw(
            "k",
            Some("application/json"),
            "{\"value\": \"v\", \"ttl\": 5}",
        )
        .await;
    assert_eq!(resp.status(), 201);
    app.stop().await;
}

async fn wrong_or_missing_content_type_is_invalid_content_type(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = "{\"value\": \"v\"}";
    error(
        app.put_raw("k", Some("text/plain"), body).await,
        415,
        "INVALID_CONTENT_TYPE",
    )
    .await;
    error(
        app.put_raw("k", None, body).await,
        415,
        "INVALID_CONTENT_TYPE",
    )
    .await;
    error(
        app.put_raw("k", Some("application/x-www-form-urlencoded"), body)
            .await,
        415,
        "INVALID_CONTENT_TYPE",
    )
    .await;
    let ok = app
        .put_raw("k", Some("application/json; charset=utf-8"), body)
        .await;
    assert_eq!(ok.status(), 201);
    app.stop().await;
}

async fn undecodable_or_empty_keys_are_invalid_key(backend: Backend) {
    let app = spawn_app(backend).await;
    error(app.get("%FF").await, 400, "INVALID_KEY").await;
    error(app.put("%C3%28", "v").await, 400, "INVALID_KEY").await;
    error(app.get("").await, 400, "INVALID_KEY").await;
    error(app.put("", "v").await, 400, "INVALID_KEY").await;
    app.stop().await;
}

async fn unknown_routes_and_methods_answer_json(backend: Backend) {
    let app = spawn_app(backend).await;
    let resp = app.client.get(app.url("/nope")).send().await.unwrap();
    error(resp, 404, "NOT_FOUND").await;
    let resp = app.client.post(app.url("/kv/a/b")).send().await.unwrap();
    assert_eq!(resp.headers()["allow"], "DELETE, GET, HEAD, PUT");
    error(resp, 405, "METHOD_NOT_ALLOWED").await;
    let resp = app.client.delete(app.url("/health")).send().await.unwrap();
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    error(resp, 405, "METHOD_NOT_ALLOWED").await;
    // What Allow promises holds: HEAD is answered where GET is.
    let resp = app.client.head(app.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    app.stop().await;
}

async fn bad_query_parameter_is_invalid_parameter(backend: Backend) {
    let app = spawn_app(backend).await;
    let resp = app
        .client
        .get(app.url("/kv/k?consistency=weird"))
        .send()
        .await
        .unwrap();
    error(resp, 400, "INVALID_PARAMETER").await;
    app.stop().await;
}

/// A client that sends headers and then stalls is answered with TIMEOUT once
/// `server.request_timeout` passes, instead of holding the connection forever.
async fn a_stalled_body_times_out(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.server.request_timeout = Duration::from_millis(300)
    })
    .await;
    let addr = app.address.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(
            b"PUT /kv/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\nConnection: close\r\n\r\n{\"value\":",
        )
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("answered within 10 s")
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("\"code\":\"TIMEOUT\""), "{response}");
    app.stop().await;
}

crate::backend_tests!(
    empty_body_is_empty_body,
    empty_value_is_empty_value,
    malformed_or_mistyped_json_is_invalid_json,
    unknown_fields_are_ignored,
    wrong_or_missing_content_type_is_invalid_content_type,
    undecodable_or_empty_keys_are_invalid_key,
    unknown_routes_and_methods_answer_json,
    bad_query_parameter_is_invalid_parameter,
    a_stalled_body_times_out,
);
