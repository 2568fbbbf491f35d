//! Every client-visible error is JSON with its documented code and status.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use reqwest::Method;

use crate::helpers::{error, json, spawn_app, spawn_app_with, Backend};

// The error table of the README, row by row: the status, `code` and `error` text that
// existing clients of the API rely on.

async fn empty_body_is_empty_body(backend: Backend) {
    let app = spawn_app(backend).await;
    for body in ["", "  \n"] {
        let resp = app.put_raw("k", Some("application/json"), body).await;
        let body = error(resp, 400, "EMPTY_BODY").await;
        assert_eq!(body["error"], "Request body is required");
    }
    app.stop().await;
}

async fn missing_null_or_empty_values_are_empty_value(backend: Backend) {
    let app = spawn_app(backend).await;
    for body in [
        r#"{}"#,
        r#"{"value": null}"#,
        r#"{"value": ""}"#,
        r#"{"val": "x"}"#,
    ] {
        let resp = app.put_raw("k", Some("application/json"), body).await;
        let answer = error(resp, 400, "EMPTY_VALUE").await;
        assert_eq!(
            answer["error"], "Value is required and cannot be empty",
            "{body}"
        );
    }
    error(app.get("k").await, 404, "KEY_NOT_FOUND").await;
    app.stop().await;
}

async fn malformed_or_mistyped_json_is_invalid_json_with_details(backend: Backend) {
    let app = spawn_app(backend).await;
    for body in [
        "{bad",
        "[1,2]",
        "\"just a string\"",
        "{\"value\": 42}",
        "{\"value\": \"x\"} trailing",
    ] {
        let resp = app.put_raw("k", Some("application/json"), body).await;
        let answer = error(resp, 400, "INVALID_JSON").await;
        assert_eq!(answer["error"], "Invalid JSON format", "{body}");
        let details = &answer["details"];
        assert!(
            details["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
        assert_eq!(details["body_length"], body.len(), "{answer}");
        assert_eq!(details["body_preview"], body, "{answer}");
    }
    // The preview is the first 100 characters of a longer body.
    let long = format!("{{\"value\": \"{}", "é".repeat(200));
    let resp = app
        .put_raw("k", Some("application/json"), long.clone())
        .await;
    let answer = error(resp, 400, "INVALID_JSON").await;
    assert_eq!(answer["details"]["body_length"], long.len());
    let preview: String = long.chars().take(100).collect();
    assert_eq!(answer["details"]["body_preview"], preview.as_str());
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

async fn a_content_type_that_is_not_json_is_invalid_content_type(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = "{\"value\": \"v\"}";
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let resp = app.put_raw("k", Some(content_type), body).await;
        let answer = error(resp, 400, "INVALID_CONTENT_TYPE").await;
        assert_eq!(answer["error"], "Content-Type must be application/json");
    }
    error(app.get("k").await, 404, "KEY_NOT_FOUND").await;
    let ok = app
        .put_raw("k", Some("application/json; charset=utf-8"), body)
        .await;
    assert_eq!(ok.status(), 201);
    app.stop().await;
}

/// As the README's error table says, a body without a `Content-Type` is read as JSON.
async fn a_body_without_content_type_is_read_as_json(backend: Backend) {
    let app = spawn_app(backend).await;
    let resp = app.put_raw("k", None, "{\"value\": \"v\"}").await;
    assert_eq!(json(resp, 201).await["value"], "v");
    assert_eq!(json(app.get("k").await, 200).await["value"], "v");
    error(app.put_raw("k", None, "{bad").await, 400, "INVALID_JSON").await;
    app.stop().await;
}

async fn kv_without_a_key_is_not_found_for_every_method(backend: Backend) {
    let app = spawn_app(backend).await;
    for method in [Method::GET, Method::PUT, Method::DELETE, Method::POST] {
        let resp = app
            .client
            .request(method.clone(), app.url("/kv/"))
            .json(&serde_json::json!({"value": "v"}))
            .send()
            .await
            .unwrap();
        error(resp, 404, "NOT_FOUND").await;
    }
    app.stop().await;
}

async fn undecodable_keys_are_invalid_key(backend: Backend) {
    let app = spawn_app(backend).await;
    error(app.get("%FF").await, 400, "INVALID_KEY").await;
    error(app.put("%C3%28", "v").await, 400, "INVALID_KEY").await;
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
    missing_null_or_empty_values_are_empty_value,
    malformed_or_mistyped_json_is_invalid_json_with_details,
    unknown_fields_are_ignored,
    a_content_type_that_is_not_json_is_invalid_content_type,
    a_body_without_content_type_is_read_as_json,
    kv_without_a_key_is_not_found_for_every_method,
    undecodable_keys_are_invalid_key,
    unknown_routes_and_methods_answer_json,
    bad_query_parameter_is_invalid_parameter,
    a_stalled_body_times_out,
);
