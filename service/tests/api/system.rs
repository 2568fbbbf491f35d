use crate::helpers::{json, spawn_app, spawn_app_with, Backend};

async fn health_reports_alive_with_an_rfc3339_timestamp(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = json(
        app.client.get(app.url("/health")).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(body["healthy"], true);
    let ts = body["timestamp"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(ts).expect("RFC 3339 timestamp");
    app.stop().await;
}

async fn ready_once_the_single_voter_leads(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = json(app.client.get(app.url("/ready")).send().await.unwrap(), 200).await;
    assert_eq!(body["ready"], true);
    assert_eq!(body["leader_id"], 1);
    app.stop().await;
}

async fn status_reports_raft_and_node_facts(backend: Backend) {
    let app = spawn_app(backend).await;
    json(app.put("a", "1").await, 201).await;
    json(app.put("b", "2").await, 201).await;
    // The 201 comes once the write is applied; /status reads Raft's metrics, which
    // catch up a moment later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let body = loop {
        let body = json(
            app.client.get(app.url("/status")).send().await.unwrap(),
            200,
        )
        .await;
        if body["applied_index"] == body["last_log_index"] {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "applied never caught up: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(body["server"], "kvstore");
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["node_id"], 1);
    assert_eq!(body["role"], "leader");
    assert_eq!(body["leader_id"], 1);
    assert!(body["term"].as_u64().unwrap() >= 1);
    let last = body["last_log_index"].as_u64().unwrap();
    let applied = body["applied_index"].as_u64().unwrap();
    assert!(last >= 2 && applied == last, "{body}");
    assert_eq!(body["key_count"], 2);
    let storage_type = match backend {
        Backend::Redb => "file",
        Backend::Postgres => "database",
    };
    assert_eq!(body["storage_type"], storage_type);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["uptime_seconds"].as_f64().unwrap() >= 0.0);
    chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).unwrap();
    app.stop().await;
}

/// With a small snapshot interval the node snapshots and purges its log as configured,
/// and a restart on the same storage serves every key from snapshot plus log.
async fn snapshots_and_purging_follow_the_configured_policy(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.raft.snapshot_interval = 10;
        s.raft.snapshot_logs_to_keep = 5;
    })
    .await;
    for i in 0..60 {
        json(app.put(&format!("k{i}"), &format!("v{i}")).await, 201).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        let status = json(
            app.client.get(app.url("/status")).send().await.unwrap(),
            200,
        )
        .await;
        let snapshot = status["snapshot_index"].as_u64().unwrap_or(0);
        let purged = status["purged_index"].as_u64().unwrap_or(0);
        if snapshot >= 50 && purged > 0 {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot/purge: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let snapshot = status["snapshot_index"].as_u64().unwrap();
    let purged = status["purged_index"].as_u64().unwrap();
    assert!(
        purged <= snapshot.saturating_sub(5),
        "kept fewer than 5 entries: {status}"
    );
    let snap_files = std::fs::read_dir(app.data_dir().join("snapshots"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "snap")
        })
        .count();
    assert_eq!(snap_files, 1, "exactly the current snapshot is kept");

    let app = app.restart().await;
    for i in 0..60 {
        let body = json(app.get(&format!("k{i}")).await, 200).await;
        assert_eq!(body["value"], format!("v{i}"));
    }
    app.stop().await;
}

crate::backend_tests!(
    health_reports_alive_with_an_rfc3339_timestamp,
    ready_once_the_single_voter_leads,
    status_reports_raft_and_node_facts,
    snapshots_and_purging_follow_the_configured_policy,
);
