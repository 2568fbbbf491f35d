//! Membership requests that must leave a single node serving.

use crate::helpers::{error, json, spawn_app, Backend};

/// A learner added at an existing member's address would be the leader itself (or
/// another member) under a second id: the leader replicates to itself as if to a
/// follower and its Raft stops. The API refuses it, and the node keeps serving.
async fn a_learner_at_a_members_address_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let status = json(
        app.client.get(app.url("/status")).send().await.unwrap(),
        200,
    )
    .await;
    let me = &status["members"][0];
    let (api, raft) = (
        me["api_addr"].as_str().unwrap(),
        me["raft_addr"].as_str().unwrap(),
    );
    let elsewhere = "http://127.0.0.1:1";
    for (api_addr, raft_addr) in [
        (api.to_string(), raft.to_string()),
        (elsewhere.to_string(), format!("{raft}/")),
        (api.to_string(), elsewhere.to_string()),
    ] {
        let resp = app
            .client
            .post(app.url("/cluster/learners"))
            .json(&serde_json::json!({"id": 4, "api_addr": api_addr, "raft_addr": raft_addr}))
            .send()
            .await
            .unwrap();
        let body = error(resp, 400, "INVALID_MEMBERSHIP").await;
        assert!(body["error"].as_str().unwrap().contains("node 1"), "{body}");
    }
    let members = json(
        app.client
            .get(app.url("/cluster/members"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(members["members"].as_array().unwrap().len(), 1, "{members}");
    json(app.put("still", "serving").await, 201).await;
    app.stop().await;
}

/// The same address spelled differently (`localhost` for `127.0.0.1`) gets past the
/// API's check, but the node answers Raft requests meant for another id with 421: the
/// learner never catches up, and the node keeps serving.
async fn a_learner_at_an_alias_of_a_members_address_does_not_stop_raft(backend: Backend) {
    let app = spawn_app(backend).await;
    let status = json(
        app.client.get(app.url("/status")).send().await.unwrap(),
        200,
    )
    .await;
    let raft = status["members"][0]["raft_addr"]
        .as_str()
        .unwrap()
        .replace("127.0.0.1", "localhost");
    let resp = app
        .client
        .post(app.url("/cluster/learners"))
        .json(&serde_json::json!({"id": 4, "api_addr": "http://localhost:1", "raft_addr": raft}))
        .send()
        .await
        .unwrap();
    // Whatever the membership call answers, Raft must keep going.
    assert!(resp.status() != 500, "{:?}", resp.text().await);
    for i in 0..20 {
        json(app.put(&format!("alias{i}"), "serving").await, 201).await;
    }
    let body = json(app.get("alias19").await, 200).await;
    assert_eq!(body["value"], "serving");
    json(app.client.get(app.url("/ready")).send().await.unwrap(), 200).await;
    app.stop().await;
}

/// Asking the leader to hand leadership to itself changes nothing: it keeps serving
/// reads and writes (openraft's transfer to the leader itself never completes, and the
/// leader stops serving meanwhile).
async fn transferring_leadership_to_the_leader_is_a_no_op(backend: Backend) {
    let app = spawn_app(backend).await;
    let resp = app
        .client
        .post(app.url("/cluster/leader"))
        .json(&serde_json::json!({"id": 1}))
        .send()
        .await
        .unwrap();
    let body = json(resp, 200).await;
    assert_eq!(body["leader_id"], 1, "{body}");
    json(app.put("after", "transfer").await, 201).await;
    let body = json(app.get("after").await, 200).await;
    assert_eq!(body["value"], "transfer");
    app.stop().await;
}

crate::backend_tests!(
    a_learner_at_a_members_address_is_refused,
    a_learner_at_an_alias_of_a_members_address_does_not_stop_raft,
    transferring_leadership_to_the_leader_is_a_no_op,
);
