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

/// Opens a connection and sends a PUT whose body never finishes: the request holds
/// its slot while the server waits for the rest of the body.
async fn stalled_upload(addr: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"PUT /kv/held HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 40\r\n\r\n{\"value\":",
        )
        .await
        .unwrap();
    stream
}

async fn beyond_max_in_flight_requests_are_shed_with_retry_after(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.server.max_in_flight = 1).await;
    let addr = app.address.trim_start_matches("http://").to_string();
    // Occupy the one slot with an upload that never finishes. A probe request can win
    // the race for the slot (then the upload is the one refused, and is answered):
    // start another upload until one holds the slot.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut stalled = stalled_upload(&addr).await;
    let shed = loop {
        let resp = app.get("/kv/other").await;
        if resp.status() == 503 {
            break resp;
        }
        assert_eq!(resp.status(), 404);
        assert!(std::time::Instant::now() < deadline, "never shed");
        let mut buf = [0u8; 1];
        if !matches!(stalled.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        {
            stalled = stalled_upload(&addr).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The refused request is answered at once, with a hint when to come back...
    assert_eq!(
        shed.headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let body = error(shed, 503, "OVERLOADED").await;
    assert!(
        body["error"].as_str().unwrap().contains("max_in_flight"),
        "{body}"
    );
    // ...while the probes and metrics still answer.
    for path in ["/health", "/ready", "/metrics"] {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    // When the stalled upload goes away, requests are served again.
    drop(stalled);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let resp = app.get("/kv/other").await;
        if resp.status() == 404 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still shedding");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("kvstore_http_errors_total") && l.contains("code=\"OVERLOADED\"")
        ),
        "no OVERLOADED errors counted"
    );
    app.stop().await;
}

crate::backend_tests!(
    beyond_max_in_flight_requests_are_shed_with_retry_after,
    key_of_exactly_the_limit_is_accepted_and_one_byte_more_is_refused,
    key_limit_counts_utf8_bytes,
    value_of_exactly_the_limit_is_accepted_and_one_byte_more_is_refused,
    limits_are_configurable,
    an_oversized_body_is_refused_by_its_declared_length,
    an_oversized_chunked_body_is_cut_off,
);
