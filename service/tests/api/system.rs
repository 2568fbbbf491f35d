use crate::helpers::{json, spawn_app};

#[tokio::test]
async fn health_reports_alive_with_an_rfc3339_timestamp() {
    let app = spawn_app().await;
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

#[tokio::test]
async fn ready_once_the_single_voter_leads() {
    let app = spawn_app().await;
    let body = json(app.client.get(app.url("/ready")).send().await.unwrap(), 200).await;
    assert_eq!(body["ready"], true);
    assert_eq!(body["leader_id"], 1);
    app.stop().await;
}

#[tokio::test]
async fn status_reports_raft_and_node_facts() {
    let app = spawn_app().await;
    json(app.put("a", "1").await, 201).await;
    json(app.put("b", "2").await, 201).await;
    let body = json(
        app.client.get(app.url("/status")).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(body["node_id"], 1);
    assert_eq!(body["role"], "leader");
    assert_eq!(body["leader_id"], 1);
    assert!(body["term"].as_u64().unwrap() >= 1);
    let last = body["last_log_index"].as_u64().unwrap();
    let applied = body["applied_index"].as_u64().unwrap();
    assert!(last >= 2 && applied == last, "{body}");
    assert_eq!(body["key_count"], 2);
    assert_eq!(body["storage_type"], "file");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["uptime_seconds"].as_f64().unwrap() >= 0.0);
    chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).unwrap();
    app.stop().await;
}
