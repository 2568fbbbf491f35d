//! The spec is served, complete, and valid according to a real OpenAPI validator.

use std::process::Command;

use crate::helpers::{json, spawn_app, Backend};

async fn swagger_ui_is_served(backend: Backend) {
    let app = spawn_app(backend).await;
    let resp = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.contains("swagger"), "not Swagger UI: {html:.200}");
    app.stop().await;
}

async fn spec_documents_every_route_and_error(backend: Backend) {
    let app = spawn_app(backend).await;
    let spec = json(
        app.client
            .get(app.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let paths = spec["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/kv/{key}", &["get", "put", "delete"][..]),
        ("/txn", &["post"][..]),
        ("/leases", &["post"][..]),
        ("/leases/{id}", &["get", "delete"][..]),
        ("/leases/{id}/keepalive", &["post"][..]),
        ("/health", &["get"][..]),
        ("/ready", &["get"][..]),
        ("/status", &["get"][..]),
    ] {
        for method in methods {
            let op = &paths[path][method];
            assert!(op.is_object(), "{method} {path} missing");
        }
    }
    // Which statuses each operation lists is checked in
    // `each_route_documents_only_the_statuses_it_can_answer`.
    let codes = &spec["components"]["schemas"]["ErrorCode"]["enum"];
    for code in [
        "INVALID_JSON",
        "EMPTY_BODY",
        "EMPTY_VALUE",
        "INVALID_CONTENT_TYPE",
        "INVALID_KEY",
        "KEY_TOO_LARGE",
        "VALUE_TOO_LARGE",
        "KEY_NOT_FOUND",
        "PRECONDITION_FAILED",
        "LEASE_NOT_FOUND",
        "INVALID_TXN",
        "UNAVAILABLE",
        "TIMEOUT",
        "INTERNAL",
    ] {
        assert!(
            codes.as_array().unwrap().iter().any(|c| c == code),
            "{code} not in spec"
        );
    }
    let yaml = app
        .client
        .get(app.url("/openapi.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(yaml.status(), 200);
    assert!(yaml.text().await.unwrap().starts_with("openapi: 3."));
    app.stop().await;
}

/// Each operation lists the statuses it can answer, and none it cannot: a probe never
/// reads a body (no 413), a read stores nothing (no 507), a write of a new key has no
/// 404.
async fn each_route_documents_only_the_statuses_it_can_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    let spec = json(
        app.client
            .get(app.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let all = [
        "200", "201", "400", "401", "403", "404", "408", "412", "413", "415", "500", "503", "504",
        "507",
    ];
    for (method, path, listed) in [
        (
            "put",
            "/kv/{key}",
            &[
                "201", "400", "401", "403", "404", "408", "412", "413", "500", "503", "504", "507",
            ][..],
        ),
        (
            "get",
            "/kv/{key}",
            &["200", "400", "401", "403", "404", "500", "503", "504"][..],
        ),
        (
            "delete",
            "/kv/{key}",
            &[
                "200", "400", "401", "403", "404", "412", "500", "503", "504",
            ][..],
        ),
        (
            "post",
            "/txn",
            &[
                "200", "400", "401", "403", "404", "408", "413", "500", "503", "504", "507",
            ][..],
        ),
        (
            "post",
            "/leases",
            &[
                "201", "400", "401", "403", "408", "413", "500", "503", "504", "507",
            ][..],
        ),
        (
            "post",
            "/leases/{id}/keepalive",
            &["200", "400", "401", "403", "404", "500", "503", "504"][..],
        ),
        (
            "delete",
            "/leases/{id}",
            &["200", "400", "401", "403", "404", "500", "503", "504"][..],
        ),
        (
            "get",
            "/leases/{id}",
            &["200", "400", "401", "403", "404", "500", "503", "504"][..],
        ),
        (
            "get",
            "/kv",
            &["200", "400", "401", "403", "500", "503", "504"][..],
        ),
        (
            "delete",
            "/kv",
            &["200", "400", "401", "403", "500", "503", "504"][..],
        ),
        ("get", "/health", &["200"][..]),
        ("get", "/ready", &["200", "503"][..]),
        ("get", "/status", &["200", "401", "403", "500", "503"][..]),
        ("get", "/cluster/members", &["200", "401", "403", "503"][..]),
        (
            "post",
            "/cluster/learners",
            &[
                "200", "400", "401", "403", "408", "413", "500", "503", "504",
            ][..],
        ),
        (
            "delete",
            "/cluster/members/{id}",
            &["200", "400", "401", "403", "500", "503", "504"][..],
        ),
    ] {
        let responses = spec["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} has no responses"));
        for status in all {
            assert_eq!(
                responses.contains_key(status),
                listed.contains(&status),
                "{method} {path}: status {status} listed: {}",
                responses.contains_key(status)
            );
        }
        for (status, response) in responses {
            if status.starts_with(['4', '5']) {
                assert_eq!(
                    response["content"]["application/json; charset=utf-8"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }
    // The 413 of a write says what it is about.
    let put_413 = &spec["paths"]["/kv/{key}"]["put"]["responses"]["413"]["description"];
    assert!(
        put_413.as_str().unwrap().contains("VALUE_TOO_LARGE"),
        "{put_413}"
    );
    app.stop().await;
}

/// Runs `openapi-spec-validator` (PyPI) on the served spec. `make test` installs it
/// into `.venv/`; `OPENAPI_SPEC_VALIDATOR` may point at another install.
async fn served_spec_passes_a_real_openapi_validator(backend: Backend) {
    let validator = std::env::var("OPENAPI_SPEC_VALIDATOR").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../.venv/bin/openapi-spec-validator"
        )
        .into()
    });
    let app = spawn_app(backend).await;
    let spec = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    std::fs::write(file.path(), spec).unwrap();
    let out = Command::new(&validator)
        .arg(file.path())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {validator} (run `make test`, which installs it): {e}")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "spec rejected:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("OK"),
        "unexpected validator output:\n{stdout}\n{stderr}"
    );
    app.stop().await;
}

/// Every `null` a response carries is declared `nullable` in its schema: a fresh node's
/// `/status` has no snapshot and no purged log yet.
async fn nulls_in_responses_are_declared_nullable(backend: Backend) {
    let app = spawn_app(backend).await;
    let spec = json(
        app.client
            .get(app.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let status = json(
        app.client.get(app.url("/status")).send().await.unwrap(),
        200,
    )
    .await;
    assert!(status["snapshot_index"].is_null(), "{status}");
    let schemas = &spec["components"]["schemas"];
    for (schema, properties) in [
        (
            "StatusResponse",
            &[
                "leader_id",
                "leader",
                "followers",
                "last_log_index",
                "committed_index",
                "applied_index",
                "snapshot_index",
                "purged_index",
            ][..],
        ),
        ("FollowerView", &["matched_index"][..]),
        ("MembersResponse", &["leader_id"][..]),
    ] {
        for property in properties {
            assert_eq!(
                schemas[schema]["properties"][property]["nullable"], true,
                "{schema}.{property} is not nullable in the spec"
            );
        }
    }
    for (name, value) in status.as_object().unwrap() {
        if value.is_null() {
            assert_eq!(
                schemas["StatusResponse"]["properties"][name]["nullable"], true,
                "/status has {name}: null, but the spec does not allow it"
            );
        }
    }
    app.stop().await;
}

crate::backend_tests!(
    swagger_ui_is_served,
    spec_documents_every_route_and_error,
    each_route_documents_only_the_statuses_it_can_answer,
    served_spec_passes_a_real_openapi_validator,
    nulls_in_responses_are_declared_nullable,
);
