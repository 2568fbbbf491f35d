//! Client authentication (`auth.tokens`): 401 without a valid bearer token, 403 with a
//! role too small for the route, and nothing asked of the probes, metrics and docs.

use kvstore::config::{ClientToken, Role, Settings};
use reqwest::{Method, RequestBuilder, Response};

use crate::helpers::{error, json, spawn_app, spawn_app_with, Backend, TestApp};

const READ: &str = "read-token-1c8e";
const WRITE: &str = "write-token-77a0";
const ADMIN: &str = "admin-token-f3d2";

fn with_tokens(s: &mut Settings) {
    s.auth.tokens = [
        (READ, Role::Read),
        (WRITE, Role::Write),
        (ADMIN, Role::Admin),
    ]
    .into_iter()
    .map(|(token, role)| ClientToken {
        token: token.into(),
        role,
    })
    .collect();
}

/// A request to `path`, with `Authorization: Bearer <token>` when a token is given.
fn request(app: &TestApp, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
    let req = app.client.request(method, app.url(path));
    match token {
        Some(token) => req.bearer_auth(token),
        None => req,
    }
}

async fn put(app: &TestApp, key: &str, token: Option<&str>) -> Response {
    request(app, Method::PUT, &format!("/kv/{key}"), token)
        .json(&serde_json::json!({"value": "v"}))
        .send()
        .await
        .unwrap()
}

async fn send(app: &TestApp, method: Method, path: &str, token: Option<&str>) -> Response {
    request(app, method, path, token).send().await.unwrap()
}

/// Asserts a 401 `UNAUTHORIZED` with a Bearer challenge, and that no token is echoed.
async fn unauthorized(resp: Response) {
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(challenge.starts_with("Bearer "), "challenge {challenge:?}");
    let body = error(resp, 401, "UNAUTHORIZED").await;
    assert_no_token(&body.to_string());
}

async fn forbidden(resp: Response) {
    let body = error(resp, 403, "FORBIDDEN").await;
    assert_no_token(&body.to_string());
}

fn assert_no_token(text: &str) {
    for token in [READ, WRITE, ADMIN, "not-a-token"] {
        assert!(!text.contains(token), "a token is in {text}");
    }
}

async fn auth_is_off_by_default(backend: Backend) {
    let app = spawn_app(backend).await;
    let resp = put(&app, "open", None).await;
    assert!(resp.headers().get("www-authenticate").is_none());
    json(resp, 201).await;
    json(send(&app, Method::GET, "/kv/open", None).await, 200).await;
    json(send(&app, Method::GET, "/status", None).await, 200).await;
    json(send(&app, Method::GET, "/cluster/members", None).await, 200).await;
    // A token nobody configured changes nothing either.
    json(
        send(&app, Method::DELETE, "/kv/open", Some("not-a-token")).await,
        200,
    )
    .await;
    app.stop().await;
}

async fn requests_without_a_valid_token_are_unauthorized(backend: Backend) {
    let app = spawn_app_with(backend, with_tokens).await;
    // No token, on every kind of route, before the request is even looked at (an empty
    // key, an unknown route, a wrong method would otherwise be 400, 404, 405).
    unauthorized(send(&app, Method::GET, "/kv/k", None).await).await;
    unauthorized(put(&app, "k", None).await).await;
    unauthorized(send(&app, Method::DELETE, "/kv/k", None).await).await;
    unauthorized(send(&app, Method::GET, "/status", None).await).await;
    unauthorized(send(&app, Method::GET, "/cluster/members", None).await).await;
    unauthorized(send(&app, Method::GET, "/kv/", None).await).await;
    unauthorized(send(&app, Method::GET, "/no/such/route", None).await).await;
    unauthorized(send(&app, Method::POST, "/status", None).await).await;
    // An unknown token.
    unauthorized(send(&app, Method::GET, "/kv/k", Some("not-a-token")).await).await;
    unauthorized(put(&app, "k", Some("not-a-token")).await).await;
    // A known token that is not sent as `Bearer <token>`.
    for value in [
        READ.to_string(),
        format!("Basic {READ}"),
        "Bearer".into(),
        format!("Bearer {READ} {READ}"),
    ] {
        let resp = app
            .client
            .get(app.url("/kv/k"))
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        unauthorized(resp).await;
    }
    // None of it was stored.
    json(send(&app, Method::GET, "/kv/k", Some(READ)).await, 404).await;
    app.stop().await;
}

async fn each_role_allows_its_routes_and_those_below(backend: Backend) {
    let app = spawn_app_with(backend, with_tokens).await;
    // read: reads and /status, no writes.
    error(
        send(&app, Method::GET, "/kv/k", Some(READ)).await,
        404,
        "KEY_NOT_FOUND",
    )
    .await;
    json(send(&app, Method::GET, "/status", Some(READ)).await, 200).await;
    forbidden(put(&app, "k", Some(READ)).await).await;
    forbidden(send(&app, Method::DELETE, "/kv/k", Some(READ)).await).await;
    // write: writes and reads.
    json(put(&app, "k", Some(WRITE)).await, 201).await;
    let body = json(send(&app, Method::GET, "/kv/k", Some(WRITE)).await, 200).await;
    assert_eq!(body["value"], "v");
    json(send(&app, Method::GET, "/kv/k", Some(READ)).await, 200).await;
    json(send(&app, Method::DELETE, "/kv/k", Some(WRITE)).await, 200).await;
    json(send(&app, Method::GET, "/status", Some(WRITE)).await, 200).await;
    // admin: everything.
    json(put(&app, "a/b", Some(ADMIN)).await, 201).await;
    json(send(&app, Method::GET, "/kv/a/b", Some(ADMIN)).await, 200).await;
    json(
        send(&app, Method::DELETE, "/kv/a/b", Some(ADMIN)).await,
        200,
    )
    .await;
    json(send(&app, Method::GET, "/status", Some(ADMIN)).await, 200).await;
    app.stop().await;
}

async fn cluster_routes_need_admin(backend: Backend) {
    let app = spawn_app_with(backend, with_tokens).await;
    for token in [READ, WRITE] {
        forbidden(send(&app, Method::GET, "/cluster/members", Some(token)).await).await;
        let resp = request(&app, Method::POST, "/cluster/voters", Some(token))
            .json(&serde_json::json!({"ids": [1]}))
            .send()
            .await
            .unwrap();
        forbidden(resp).await;
        forbidden(send(&app, Method::DELETE, "/cluster/members/7", Some(token)).await).await;
    }
    let members = json(
        send(&app, Method::GET, "/cluster/members", Some(ADMIN)).await,
        200,
    )
    .await;
    assert_eq!(members["members"].as_array().unwrap().len(), 1, "{members}");
    app.stop().await;
}

/// With a cluster secret too, the membership routes need both: the admin token and the
/// secret.
async fn cluster_routes_still_need_the_cluster_secret(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        with_tokens(s);
        s.cluster.secret = "cluster-secret".into();
    })
    .await;
    let members = |token: Option<&'static str>, secret: Option<&'static str>| {
        let mut req = request(&app, Method::GET, "/cluster/members", token);
        if let Some(secret) = secret {
            req = req.header("x-kvstore-secret", secret);
        }
        req.send()
    };
    let body = error(
        members(Some(ADMIN), None).await.unwrap(),
        401,
        "UNAUTHORIZED",
    )
    .await;
    assert!(
        body["error"].as_str().unwrap().contains("x-kvstore-secret"),
        "{body}"
    );
    unauthorized(members(None, Some("cluster-secret")).await.unwrap()).await;
    forbidden(members(Some(WRITE), Some("cluster-secret")).await.unwrap()).await;
    json(
        members(Some(ADMIN), Some("cluster-secret")).await.unwrap(),
        200,
    )
    .await;
    app.stop().await;
}

async fn probes_metrics_and_docs_need_no_token(backend: Backend) {
    let app = spawn_app_with(backend, with_tokens).await;
    for path in [
        "/health",
        "/ready",
        "/metrics",
        "/docs",
        "/openapi.json",
        "/openapi.yaml",
    ] {
        let resp = send(&app, Method::GET, path, None).await;
        assert_eq!(resp.status(), 200, "{path}");
        // Even with a wrong token: these routes do not look at it.
        let resp = send(&app, Method::GET, path, Some("not-a-token")).await;
        assert_eq!(resp.status(), 200, "{path}");
    }
    // Refusals are counted like any other error.
    unauthorized(send(&app, Method::GET, "/kv/k", None).await).await;
    forbidden(put(&app, "k", Some(READ)).await).await;
    let metrics = send(&app, Method::GET, "/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    for code in ["UNAUTHORIZED", "FORBIDDEN"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("kvstore_http_errors_total")
                    && l.contains(&format!("code=\"{code}\""))),
            "no {code} errors counted"
        );
    }
    assert_no_token(&metrics);
    app.stop().await;
}

/// The spec declares the bearer scheme on the operations that can ask for it, as
/// optional (`{}`: a node without tokens asks for none), and documents 401 and 403.
async fn the_spec_declares_the_bearer_scheme(backend: Backend) {
    let app = spawn_app_with(backend, with_tokens).await;
    let spec = json(send(&app, Method::GET, "/openapi.json", None).await, 200).await;
    let scheme = &spec["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    let paths = &spec["paths"];
    for (path, method) in [
        ("/kv/{key}", "get"),
        ("/kv/{key}", "put"),
        ("/kv/{key}", "delete"),
        ("/status", "get"),
        ("/cluster/members", "get"),
        ("/cluster/learners", "post"),
        ("/cluster/voters", "post"),
        ("/cluster/members/{id}", "delete"),
        ("/cluster/leader", "post"),
    ] {
        let op = &paths[path][method];
        assert_eq!(
            op["security"],
            serde_json::json!([{"bearerAuth": []}, {}]),
            "{method} {path}"
        );
        for status in ["401", "403"] {
            assert!(
                op["responses"][status].is_object(),
                "{method} {path} lacks {status}"
            );
        }
    }
    for path in ["/health", "/ready", "/metrics"] {
        assert!(
            paths[path]["get"]["security"].is_null(),
            "{path} should need no token"
        );
    }
    let codes = spec["components"]["schemas"]["ErrorCode"]["enum"].to_string();
    assert!(codes.contains("\"FORBIDDEN\""), "{codes}");
    app.stop().await;
}

/// The cluster secret is checked before the body is read: a change with a wrong secret
/// and a body that is not JSON answers 401, with the right one 400. The spec shows the
/// secret as an optional header of every membership route.
async fn the_cluster_secret_is_checked_before_the_body(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.cluster.secret = "cluster-secret".into()).await;
    let learners = |secret: &'static str| {
        app.client
            .post(app.url("/cluster/learners"))
            .header("x-kvstore-secret", secret)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
    };
    let body = error(learners("wrong").await.unwrap(), 401, "UNAUTHORIZED").await;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("wrong cluster secret"),
        "{body}"
    );
    assert!(!body.to_string().contains("cluster-secret"), "{body}");
    error(
        learners("cluster-secret").await.unwrap(),
        400,
        "INVALID_JSON",
    )
    .await;
    let spec = json(
        app.client
            .get(app.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    for (method, path) in [
        ("get", "/cluster/members"),
        ("post", "/cluster/learners"),
        ("post", "/cluster/voters"),
        ("delete", "/cluster/members/{id}"),
        ("post", "/cluster/leader"),
    ] {
        let parameters = spec["paths"][path][method]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path} has no parameters"));
        let secret = parameters
            .iter()
            .find(|p| p["name"] == "x-kvstore-secret")
            .unwrap_or_else(|| panic!("{method} {path} does not declare the secret"));
        assert_eq!(secret["in"], "header", "{method} {path}");
        assert_eq!(secret["required"], false, "{method} {path}");
    }
    app.stop().await;
}

crate::backend_tests!(
    auth_is_off_by_default,
    requests_without_a_valid_token_are_unauthorized,
    each_role_allows_its_routes_and_those_below,
    cluster_routes_need_admin,
    cluster_routes_still_need_the_cluster_secret,
    probes_metrics_and_docs_need_no_token,
    the_spec_declares_the_bearer_scheme,
    the_cluster_secret_is_checked_before_the_body,
);
