//! Leases: granted, attached to keys, kept alive, revoked, and expired by the leader
//! through the Raft log.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{error, json, spawn_app, Backend, TestApp};

impl TestApp {
    pub async fn grant(&self, ttl_seconds: u64) -> u64 {
        let resp = self
            .client
            .post(self.url("/leases"))
            .json(&json!({ "ttl_seconds": ttl_seconds }))
            .send()
            .await
            .expect("POST /leases");
        json(resp, 201).await["id"].as_u64().unwrap()
    }

    pub async fn lease(&self, id: u64) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/leases/{id}")))
            .send()
            .await
            .expect("GET /leases/{id}")
    }

    pub async fn keepalive(&self, id: u64) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/leases/{id}/keepalive")))
            .send()
            .await
            .expect("keepalive")
    }

    pub async fn put_on_lease(&self, key: &str, lease: u64) -> reqwest::Response {
        self.client
            .put(self.url(&format!("/kv/{key}")))
            .json(&json!({ "value": "v", "lease": lease }))
            .send()
            .await
            .expect("PUT")
    }

    /// Waits until GET `key` answers 404, up to `within`; returns how long it took.
    async fn gone_within(&self, key: &str, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let status = self.get(key).await.status();
            if status == 404 {
                return start.elapsed();
            }
            assert_eq!(status, 200);
            assert!(
                start.elapsed() < within,
                "{key} still there after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn a_lease_keeps_its_keys_until_it_expires(backend: Backend) {
    let app = spawn_app(backend).await;
    let granted = Instant::now();
    let id = app.grant(1).await;
    assert_eq!(app.put_on_lease("a", id).await.status(), 201);
    let body = json(app.put_on_lease("b", id).await, 201).await;
    assert_eq!(body["lease"], id);
    assert_eq!(json(app.get("b").await, 200).await["lease"], id);
    app.put("free", "v").await;

    let info = json(app.lease(id).await, 200).await;
    assert_eq!(info["ttl_seconds"], 1);
    assert_eq!(info["keys"], json!(["a", "b"]));
    assert!(info["remaining_ms"].as_u64().unwrap() <= 1000);

    app.gone_within("a", Duration::from_secs(5)).await;
    assert!(granted.elapsed() >= Duration::from_secs(1), "never early");
    assert_eq!(app.get("b").await.status(), 404);
    assert_eq!(app.get("free").await.status(), 200);
    error(app.lease(id).await, 404, "LEASE_NOT_FOUND").await;
    error(app.keepalive(id).await, 404, "LEASE_NOT_FOUND").await;
    let late = app.put_on_lease("c", id).await;
    let body = error(late, 404, "LEASE_NOT_FOUND").await;
    assert_eq!(body["lease_id"], id);
    assert_eq!(app.get("c").await.status(), 404, "nothing written");
}

async fn keepalives_hold_a_lease_past_its_ttl(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.grant(1).await;
    app.put_on_lease("held", id).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2500) {
        let kept = json(app.keepalive(id).await, 200).await;
        assert_eq!(kept["id"], id);
        assert_eq!(app.get("held").await.status(), 200);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    app.gone_within("held", Duration::from_secs(5)).await;
}

async fn a_revoke_deletes_the_keys_still_attached(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.grant(60).await;
    for key in ["x/1", "x/2", "x/3"] {
        app.put_on_lease(key, id).await;
    }
    // Written again without the lease: detached, it stays.
    app.put("x/2", "mine").await;
    let resp = app
        .client
        .delete(app.url(&format!("/leases/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(json(resp, 200).await["deleted_keys"], 2);
    assert_eq!(app.get("x/1").await.status(), 404);
    assert_eq!(json(app.get("x/2").await, 200).await["value"], "mine");
    let again = app
        .client
        .delete(app.url(&format!("/leases/{id}")))
        .send()
        .await
        .unwrap();
    error(again, 404, "LEASE_NOT_FOUND").await;
}

async fn a_put_with_a_ttl_gets_a_lease_of_its_own(backend: Backend) {
    let app = spawn_app(backend).await;
    let resp = app
        .client
        .put(app.url("/kv/session"))
        .json(&json!({"value": "v", "ttl_seconds": 1}))
        .send()
        .await
        .unwrap();
    let body = json(resp, 201).await;
    let lease = body["lease"].as_u64().unwrap();
    assert_eq!(
        json(app.lease(lease).await, 200).await["keys"],
        json!(["session"])
    );
    app.gone_within("session", Duration::from_secs(5)).await;

    for body in [
        json!({"value": "v", "ttl_seconds": 0}),
        json!({"value": "v", "ttl_seconds": 31_536_001u64}),
        json!({"value": "v", "ttl_seconds": 5, "lease": lease}),
    ] {
        let resp = app
            .client
            .put(app.url("/kv/k"))
            .json(&body)
            .send()
            .await
            .unwrap();
        error(resp, 400, "INVALID_PARAMETER").await;
    }
    let resp = app
        .client
        .post(app.url("/leases"))
        .json(&json!({"ttl_seconds": 0}))
        .send()
        .await
        .unwrap();
    error(resp, 400, "INVALID_PARAMETER").await;
}

async fn leases_and_their_keys_survive_a_restart(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.grant(60).await;
    app.put_on_lease("kept", id).await;
    let app = app.restart().await;
    let info: Value = json(app.lease(id).await, 200).await;
    assert_eq!(info["keys"], json!(["kept"]));
    // A restarted node counts a full TTL from its start: never less.
    assert!(info["remaining_ms"].as_u64().unwrap() > 50_000);
    let resp = app
        .client
        .delete(app.url(&format!("/leases/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(json(resp, 200).await["deleted_keys"], 1);
}

async fn a_transaction_attaches_keys_to_a_lease(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.grant(1).await;
    let lock = json!({
        "compare": [{"key": "lock", "target": "create_revision", "op": "=", "value": 0}],
        "success": [{"put": {"key": "lock", "value": "holder-1", "lease": id}}],
        "failure": [{"get": {"key": "lock"}}]
    });
    assert_eq!(
        json(app.txn(lock.clone()).await, 200).await["succeeded"],
        true
    );
    assert_eq!(
        json(app.txn(lock.clone()).await, 200).await["succeeded"],
        false
    );
    app.gone_within("lock", Duration::from_secs(5)).await;
    // The lease is gone: a put naming it fails the whole transaction.
    let body = error(app.txn(lock).await, 404, "LEASE_NOT_FOUND").await;
    assert_eq!(body["lease_id"], id);
    assert_eq!(app.get("lock").await.status(), 404);
}

crate::backend_tests!(
    a_lease_keeps_its_keys_until_it_expires,
    keepalives_hold_a_lease_past_its_ttl,
    a_revoke_deletes_the_keys_still_attached,
    a_put_with_a_ttl_gets_a_lease_of_its_own,
    leases_and_their_keys_survive_a_restart,
    a_transaction_attaches_keys_to_a_lease,
);
