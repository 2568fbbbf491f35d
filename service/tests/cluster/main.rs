//! Three (and four) real `kvstore` processes on loopback: formation, forwarding,
//! linearizable reads, leader loss, stalls, snapshots, membership and the secret.

#[path = "../support/mod.rs"]
mod support;

mod leases;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use kvstore::raft::{rpc, TypeConfig};
use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use serde_json::json;
use support::harness::{self, Cluster};
use support::{eventually, get_json, large_values, put_json, put_ok};
use tokio_util::codec::Framed;

fn others(all: &[u64], but: u64) -> Vec<u64> {
    all.iter().copied().filter(|id| *id != but).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_cluster_elects_one_leader_within_3s() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(3))
        .await;
    let status = cluster.status(leader).await.unwrap();
    assert_eq!(status["role"], "leader");
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
    let followers = status["followers"]
        .as_array()
        .expect("leader lists followers");
    assert_eq!(followers.len(), 2);
    for id in others(&[1, 2, 3], leader) {
        let s = cluster.status(id).await.unwrap();
        assert_eq!(s["role"], "follower");
        assert_eq!(s["leader"]["id"], leader);
        assert_eq!(s["leader"]["api_addr"], cluster.url(leader, ""));
        assert!(
            s["followers"].is_null(),
            "only the leader reports followers"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_on_a_follower_read_everywhere_delete_404_everywhere() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .await;
    let follower = others(&[1, 2, 3], leader)[0];

    let body = put_ok(
        &cluster.client,
        &cluster.url(follower, "/kv/user:1"),
        "John Doe",
    )
    .await;
    assert_eq!(body["node_id"], follower);
    // Linearizable reads on every node see the write at once.
    for id in [1, 2, 3] {
        let (code, body) = get_json(&cluster.client, &cluster.url(id, "/kv/user:1"))
            .await
            .unwrap();
        assert_eq!(
            (code, &body["value"]),
            (200, &json!("John Doe")),
            "node {id}"
        );
        assert_eq!(body["node_id"], id);
    }
    let other = others(&[1, 2, 3], leader)[1];
    let resp = cluster
        .client
        .delete(cluster.url(other, "/kv/user:1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for id in [1, 2, 3] {
        let (code, body) = get_json(&cluster.client, &cluster.url(id, "/kv/user:1"))
            .await
            .unwrap();
        assert_eq!(code, 404, "node {id}: {body}");
        assert_eq!(body["code"], "KEY_NOT_FOUND");
    }
}

/// A range delete sent to a follower is forwarded, committed as one log entry, and
/// removes the whole range on every node, leaving the keys outside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_delete_is_one_log_entry_that_reaches_every_node() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .await;
    let follower = others(&[1, 2, 3], leader)[0];
    for i in 0..20 {
        let url = cluster.url(leader, &format!("/kv/jobs/{i:02}"));
        put_ok(&cluster.client, &url, "queued").await;
    }
    for key in ["jobs", "jobs0", "other"] {
        put_ok(
            &cluster.client,
            &cluster.url(leader, &format!("/kv/{key}")),
            "kept",
        )
        .await;
    }
    // Read from /status (Raft's own numbers; the gauges of /metrics trail them by up to
    // a watcher pass): the leader's last log index, once every node has applied it.
    let status = |id: u64, field: &'static str| {
        let cluster = &cluster;
        async move {
            let (_, body) = get_json(&cluster.client, &cluster.url(id, "/status")).await?;
            body[field].as_u64()
        }
    };
    let applied_everywhere = |index: u64| {
        let status = &status;
        async move {
            for id in [1, 2, 3] {
                if status(id, "applied_index").await? < index {
                    return None;
                }
            }
            Some(())
        }
    };
    let before = eventually(
        Duration::from_secs(10),
        "the writes applied everywhere",
        || async {
            let last = status(leader, "last_log_index").await?;
            applied_everywhere(last).await.map(|_| last)
        },
    )
    .await;

    let resp = cluster
        .client
        .delete(cluster.url(follower, "/kv?prefix=jobs/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["deleted"], 20, "{body}");
    assert_eq!(body["node_id"], follower);

    eventually(
        Duration::from_secs(10),
        "the range delete applied everywhere",
        || applied_everywhere(before + 1),
    )
    .await;
    assert_eq!(
        status(leader, "last_log_index").await,
        Some(before + 1),
        "the range delete takes one log entry"
    );
    for id in [1, 2, 3] {
        for consistency in ["stale", "linearizable"] {
            let url = cluster.url(id, &format!("/kv?consistency={consistency}"));
            let (code, body) = get_json(&cluster.client, &url).await.unwrap();
            assert_eq!(code, 200, "node {id}: {body}");
            let keys: Vec<&str> = body["kvs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|kv| kv["key"].as_str().unwrap())
                .collect();
            assert_eq!(keys, ["jobs", "jobs0", "other"], "node {id}, {consistency}");
        }
    }
    assert_eq!(
        cluster
            .metric(follower, "kvstore_range_deleted_keys_total")
            .await,
        Some(20.0)
    );
}

/// Writers spread over the given nodes; every 201 is recorded.
fn start_writers(
    cluster: &Cluster,
    targets: Vec<u64>,
    prefix: &'static str,
    stop: Arc<Mutex<bool>>,
) -> (Arc<Mutex<Vec<String>>>, Vec<tokio::task::JoinHandle<()>>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for (w, target) in targets.into_iter().enumerate() {
        let url = cluster.url(target, "/kv/");
        let client = cluster.client.clone();
        let (acked, stop) = (acked.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            for i in 0.. {
                if *stop.lock().unwrap() {
                    return;
                }
                let key = format!("{prefix}-{w}-{i}");
                if let Some((201, _)) = put_json(&client, &format!("{url}{key}"), &key).await {
                    acked.lock().unwrap().push(key);
                }
            }
        }));
    }
    (acked, handles)
}

async fn finish_writers(stop: Arc<Mutex<bool>>, handles: Vec<tokio::task::JoinHandle<()>>) {
    *stop.lock().unwrap() = true;
    for h in handles {
        tokio::time::timeout(Duration::from_secs(20), h)
            .await
            .expect("writers stop")
            .expect("writer task");
    }
}

async fn wait_acked(acked: &Arc<Mutex<Vec<String>>>, at_least: usize, within: Duration) {
    eventually(
        within,
        &format!("{at_least} acknowledged writes"),
        || async { (acked.lock().unwrap().len() >= at_least).then_some(()) },
    )
    .await
}

/// Every acknowledged key must be readable, linearizably, from each of `nodes`.
async fn assert_all_readable(cluster: &Cluster, nodes: &[u64], keys: &[String]) {
    for id in nodes {
        for key in keys {
            let (code, body) = get_json(&cluster.client, &cluster.url(*id, &format!("/kv/{key}")))
                .await
                .unwrap_or_else(|| panic!("node {id} did not answer"));
            assert_eq!(code, 200, "node {id} lost acknowledged key {key}: {body}");
            assert_eq!(body["value"], key.as_str());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .await;
    let survivors = others(&[1, 2, 3], leader);

    // Writers on the survivors: they keep going through the leader's death.
    let stop = Arc::new(Mutex::new(false));
    let (acked, writers) = start_writers(
        &cluster,
        vec![survivors[0], survivors[1], survivors[0]],
        "k",
        stop.clone(),
    );
    wait_acked(&acked, 100, Duration::from_secs(20)).await;

    cluster.kill(leader);
    let killed_at = Instant::now();
    let new_leader = cluster
        .wait_leader(&survivors, Duration::from_secs(5))
        .await;
    assert!(survivors.contains(&new_leader));
    assert!(
        killed_at.elapsed() < Duration::from_secs(5),
        "new leader took {:?}",
        killed_at.elapsed()
    );
    let before = acked.lock().unwrap().len();
    wait_acked(&acked, before + 100, Duration::from_secs(20)).await;
    finish_writers(stop, writers).await;

    let keys = acked.lock().unwrap().clone();
    assert_all_readable(&cluster, &survivors, &keys).await;

    // The old leader comes back as a follower and catches up.
    cluster.restart(leader);
    let last = keys.last().unwrap().clone();
    cluster
        .wait_local_value(leader, &last, &last, Duration::from_secs(20))
        .await;
    assert_all_readable(&cluster, &[leader], &keys).await;
    assert!(
        !cluster.node(leader).logged("initialised a new cluster"),
        "a restarted node must not initialise again"
    );
}

/// A stale read is answered from the node's own copy, without the leader: a follower
/// whose peers are all stalled still serves it (a value, and a 404 for a key it does not
/// have), while a linearizable read there, which needs the leader, fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_serve_the_local_copy() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .await;
    let follower = others(&[1, 2, 3], leader)[0];
    put_ok(&cluster.client, &cluster.url(leader, "/kv/k"), "v").await;
    cluster
        .wait_local_value(follower, "k", "v", Duration::from_secs(5))
        .await;

    for id in others(&[1, 2, 3], follower) {
        cluster.pause(id);
    }
    let stale = |key: &str| cluster.url(follower, &format!("/kv/{key}?consistency=stale"));
    let (code, body) = get_json(&cluster.client, &stale("k")).await.unwrap();
    assert_eq!((code, &body["value"]), (200, &json!("v")), "{body}");
    assert_eq!(body["node_id"], follower);
    let (code, body) = get_json(&cluster.client, &stale("absent")).await.unwrap();
    assert_eq!(
        (code, &body["code"]),
        (404, &json!("KEY_NOT_FOUND")),
        "{body}"
    );
    let (code, body) = get_json(&cluster.client, &cluster.url(follower, "/kv/k"))
        .await
        .expect("an HTTP answer");
    assert!(
        code == 503 || code == 504,
        "a linearizable read without the leader must fail: {code} {body}"
    );
    assert!(body["code"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_follower_does_not_stop_the_majority_and_converges() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .await;
    let stalled = others(&[1, 2, 3], leader)[0];
    let healthy = others(&[1, 2, 3], stalled);

    cluster.pause(stalled);
    for i in 0..50 {
        let target = healthy[i % 2];
        let key = format!("s{i}");
        put_ok(
            &cluster.client,
            &cluster.url(target, &format!("/kv/{key}")),
            &key,
        )
        .await;
    }
    cluster.resume(stalled);
    cluster
        .wait_local_value(stalled, "s49", "s49", Duration::from_secs(10))
        .await;
    let keys: Vec<String> = (0..50).map(|i| format!("s{i}")).collect();
    assert_all_readable(&cluster, &[stalled], &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_leader_is_replaced_and_acknowledges_nothing_it_cannot_commit() {
    let cluster = Cluster::start(3, &[]);
    let old = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .await;
    let majority = others(&[1, 2, 3], old);

    cluster.pause(old);
    let new = cluster.wait_leader(&majority, Duration::from_secs(5)).await;
    assert_ne!(new, old);

    // A write sent to the stalled old leader waits in its socket meanwhile.
    let client = cluster.client.clone();
    let stale_url = cluster.url(old, "/kv/to-old-leader");
    let to_old = tokio::spawn(async move { put_json(&client, &stale_url, "maybe").await });

    for i in 0..20 {
        let key = format!("m{i}");
        put_ok(
            &cluster.client,
            &cluster.url(majority[i % 2], &format!("/kv/{key}")),
            &key,
        )
        .await;
    }
    cluster.resume(old);
    let answer = tokio::time::timeout(Duration::from_secs(15), to_old)
        .await
        .expect("the old leader answers after it resumes")
        .unwrap();
    // Whatever the old leader answered, a 201 must mean the write is in the majority's
    // log; anything else must be an honest error, never a success that is not there.
    let (code, body) = get_json(&cluster.client, &cluster.url(new, "/kv/to-old-leader"))
        .await
        .unwrap();
    match answer {
        Some((201, _)) => assert_eq!((code, &body["value"]), (200, &json!("maybe"))),
        Some((status, err)) => {
            assert!(status >= 500, "unexpected answer {status}: {err}");
            assert!(err["code"].is_string(), "{err}");
        }
        None => panic!("the old leader gave no HTTP answer"),
    }
    // The old leader has become a follower of the new one and serves linearizable reads.
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(10))
        .await;
    assert_ne!(leader, old);
    let (code, _) = get_json(&cluster.client, &cluster.url(old, "/kv/m19"))
        .await
        .unwrap();
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_the_purged_log_catches_up_by_snapshot() {
    let mut cluster = Cluster::start(
        3,
        &[
            ("KV_RAFT_SNAPSHOT_INTERVAL", "20"),
            ("KV_RAFT_SNAPSHOT_LOGS_TO_KEEP", "5"),
        ],
    );
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .await;
    let lagging = others(&[1, 2, 3], leader)[0];
    cluster.stop(lagging);

    for i in 0..120 {
        let key = format!("p{i}");
        put_ok(
            &cluster.client,
            &cluster.url(leader, &format!("/kv/{key}")),
            &key,
        )
        .await;
    }
    // The leader's log no longer holds what the lagging node needs.
    eventually(
        Duration::from_secs(30),
        "the leader to purge its log",
        || async {
            let status = cluster.status(leader).await?;
            (status["purged_index"].as_u64()? > 20).then_some(())
        },
    )
    .await;

    cluster.restart(lagging);
    cluster
        .wait_local_value(lagging, "p119", "p119", Duration::from_secs(45))
        .await;
    assert!(
        cluster.node(lagging).logged("installed snapshot"),
        "the lagging node must have caught up by installing a snapshot"
    );
    let keys: Vec<String> = (0..120).map(|i| format!("p{i}")).collect();
    assert_all_readable(&cluster, &[lagging], &keys).await;
}

/// Adds the started, empty node `id` as a learner through node `via` (which returns
/// once it has caught up), then makes it a voter.
async fn join_as_voter(cluster: &Cluster, via: u64, id: u64, api: &str, raft: &str) {
    let resp = cluster
        .client
        .post(cluster.url(via, "/cluster/learners"))
        .json(&json!({"id": id, "api_addr": api, "raft_addr": raft}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let resp = cluster
        .client
        .post(cluster.url(via, "/cluster/voters"))
        .json(&json!({"ids": [id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_promote_and_remove_members_while_serving() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .await;
    let stop = Arc::new(Mutex::new(false));
    let (acked, writers) = start_writers(&cluster, vec![leader, leader], "w", stop.clone());

    let (api, raft) = cluster.start_joiner(4);
    let via = others(&[1, 2, 3], leader)[0];
    join_as_voter(&cluster, via, 4, &api, &raft).await;

    let removed = others(&[1, 2, 3], leader)[1];
    let resp = cluster
        .client
        .delete(cluster.url(leader, &format!("/cluster/members/{removed}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    let before = acked.lock().unwrap().len();
    wait_acked(&acked, before + 20, Duration::from_secs(20)).await;
    finish_writers(stop, writers).await;

    let (_, members) = get_json(&cluster.client, &cluster.url(leader, "/cluster/members"))
        .await
        .unwrap();
    let roles: BTreeMap<u64, String> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: BTreeMap<u64, String> = others(&[1, 2, 3, 4], removed)
        .into_iter()
        .map(|id| (id, "voter".to_string()))
        .collect();
    assert_eq!(roles, expected);

    // The new member serves linearizable reads of everything acknowledged.
    let keys = acked.lock().unwrap().clone();
    assert_all_readable(&cluster, &[4], &keys).await;

    // A removed id is retired for good.
    let resp = cluster
        .client
        .post(cluster.url(leader, "/cluster/learners"))
        .json(&json!({"id": removed, "api_addr": "http://127.0.0.1:1", "raft_addr": "http://127.0.0.1:2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "INVALID_MEMBERSHIP");
}

/// The README's procedure for a node whose log is corrupt (it refuses to start): remove
/// it, and join a new, empty node as a new member; it gets everything from its peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_refuses_a_corrupt_log_is_rebuilt_from_its_peers() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .await;
    let broken = others(&[1, 2, 3], leader)[0];
    let mut keys = Vec::new();
    for i in 0..200 {
        let key = format!("r{i}");
        // A put that times out under load is sent again (it is idempotent).
        put_ok(
            &cluster.client,
            &cluster.url(leader, &format!("/kv/{key}")),
            &key,
        )
        .await;
        keys.push(key);
    }
    cluster
        .wait_local_value(broken, "r199", "r199", Duration::from_secs(10))
        .await;
    cluster.kill(broken);

    // One flipped byte in the middle of its log, with valid records after it.
    let log_dir = cluster.data_dir(broken).join("log");
    let segment = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5A;
    std::fs::write(&segment, &bytes).unwrap();
    let (status, _, stderr) = cluster.restart_to_exit(broken);
    assert!(!status.success());
    assert!(
        stderr.contains(&segment.display().to_string()) && stderr.contains("offset"),
        "the refusal names the file and offset: {stderr}"
    );
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "left as it was");

    // The procedure: remove the broken member, join a new empty node, promote it.
    let resp = cluster
        .client
        .delete(cluster.url(leader, &format!("/cluster/members/{broken}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let (api, raft) = cluster.start_joiner(4);
    join_as_voter(&cluster, leader, 4, &api, &raft).await;
    assert_all_readable(&cluster, &[4], &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_naming_unknown_nodes_are_400() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .await;
    let follower = others(&[1, 2, 3], leader)[0];
    for id in [leader, follower] {
        let resp = cluster
            .client
            .post(cluster.url(id, "/cluster/voters"))
            .json(&json!({"ids": [42]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "INVALID_MEMBERSHIP", "{body}");

        let resp = cluster
            .client
            .delete(cluster.url(id, "/cluster/members/42"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let resp = cluster
            .client
            .post(cluster.url(id, "/cluster/leader"))
            .json(&json!({"id": 42}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_can_be_transferred() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .await;
    let to = others(&[1, 2, 3], leader)[1];
    let resp = cluster
        .client
        .post(cluster.url(leader, "/cluster/leader"))
        .json(&json!({"id": to}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    eventually(Duration::from_secs(10), "leadership to move", || async {
        let status = cluster.status(to).await?;
        (status["role"] == "leader").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_secret_guards_raft_rpc_and_membership_routes() {
    let cluster = Cluster::start(3, &[("KV_CLUSTER_SECRET", "correct horse")]);
    // The nodes themselves use the secret: the cluster forms and replicates.
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .await;
    put_ok(
        &cluster.client,
        &cluster.url(others(&[1, 2, 3], leader)[0], "/kv/x"),
        "1",
    )
    .await;

    let resp = cluster
        .client
        .post(cluster.raft_url(leader, "/raft/vote"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "UNAUTHORIZED");

    let resp = cluster
        .client
        .post(cluster.raft_url(leader, "/raft/vote"))
        .header("x-kvstore-secret", "wrong")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // The call stream: refused without the secret, and with it a working exchange of
    // AppendEntries (this one from a stale term, so it changes nothing).
    let open_stream = |secret: &'static str| {
        cluster
            .client
            .get(cluster.raft_url(leader, rpc::STREAM))
            .header("connection", "upgrade")
            .header("upgrade", rpc::STREAM_PROTOCOL)
            .header("x-kvstore-secret", secret)
            .send()
    };
    assert_eq!(open_stream("wrong").await.unwrap().status(), 401);
    let resp = open_stream("correct horse").await.unwrap();
    assert_eq!(resp.status(), 101);
    let mut stream = Framed::new(resp.upgrade().await.unwrap(), rpc::stream_codec());
    let stale = AppendEntriesRequest::<TypeConfig> {
        vote: openraft::impls::Vote::new_committed(0, 0),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    let mut frame = vec![rpc::stream_kind(rpc::APPEND).unwrap()];
    frame.extend(serde_json::to_vec(&stale).unwrap());
    stream.send(bytes::Bytes::from(frame)).await.unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an answer on the stream")
        .unwrap()
        .unwrap();
    let answer: Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>> =
        serde_json::from_slice(&frame).unwrap();
    assert!(
        matches!(answer, Ok(AppendEntriesResponse::HigherVote(_))),
        "{answer:?}"
    );

    let resp = cluster
        .client
        .get(cluster.url(leader, "/cluster/members"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = cluster
        .client
        .get(cluster.url(leader, "/cluster/members"))
        .header("x-kvstore-secret", "correct horse")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The key-value API itself is not behind the cluster secret.
    let (code, _) = get_json(&cluster.client, &cluster.url(leader, "/kv/x"))
        .await
        .unwrap();
    assert_eq!(code, 200);
}

/// Whether iptables can cut traffic here. Without root or iptables the partition tests
/// say so and return, unless `KV_REQUIRE_NET_FAULTS` is set (CI sets it), which turns
/// the missing tool into a failure.
fn partitions_available() -> bool {
    if harness::can_partition() {
        return true;
    }
    assert!(
        std::env::var_os("KV_REQUIRE_NET_FAULTS").is_none(),
        "KV_REQUIRE_NET_FAULTS is set but iptables cannot be used (needs root and iptables)"
    );
    eprintln!("SKIPPED: cutting traffic needs root and iptables; KV_REQUIRE_NET_FAULTS=1 makes this a failure");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_follower_answers_503_never_stale_and_converges_after_healing() {
    if !partitions_available() {
        return;
    }
    let cluster = Cluster::start_isolatable(3, 20, &[]);
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .await;
    let cut = others(&[1, 2, 3], leader)[0];
    let other = others(&[1, 2, 3], leader)[1];
    put_ok(&cluster.client, &cluster.url(leader, "/kv/k"), "before").await;
    cluster
        .wait_local_value(cut, "k", "before", Duration::from_secs(5))
        .await;

    let partition = cluster.cut_off(cut);
    // The majority keeps serving, through the leader and through the other follower.
    put_ok(&cluster.client, &cluster.url(other, "/kv/k"), "after").await;
    for i in 0..10 {
        put_ok(
            &cluster.client,
            &cluster.url(leader, &format!("/kv/n{i}")),
            "x",
        )
        .await;
    }
    // The cut-off node refuses rather than answering with its stale copy.
    let (code, body) = get_json(&cluster.client, &cluster.url(cut, "/kv/k"))
        .await
        .unwrap();
    assert_eq!(
        code, 503,
        "a cut-off node must not serve a linearizable read: {body}"
    );
    assert!(body["code"].is_string());
    let (code, body) = put_json(&cluster.client, &cluster.url(cut, "/kv/k2"), "v")
        .await
        .unwrap();
    assert_eq!(
        code, 503,
        "a cut-off node cannot acknowledge a write: {body}"
    );
    // An explicitly stale read is served from the local copy.
    let (code, body) = get_json(
        &cluster.client,
        &cluster.url(cut, "/kv/k?consistency=stale"),
    )
    .await
    .unwrap();
    assert_eq!((code, &body["value"]), (200, &json!("before")));

    partition.heal();
    cluster
        .wait_local_value(cut, "k", "after", Duration::from_secs(15))
        .await;
    let (code, body) = get_json(&cluster.client, &cluster.url(cut, "/kv/k"))
        .await
        .unwrap();
    assert_eq!((code, &body["value"]), (200, &json!("after")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_acknowledges_nothing_and_the_majority_moves_on() {
    if !partitions_available() {
        return;
    }
    let cluster = Cluster::start_isolatable(3, 30, &[]);
    let old = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .await;
    let majority = others(&[1, 2, 3], old);

    let partition = cluster.cut_off(old);
    let cut_at = Instant::now();
    // Writes sent to the old leader after the cut: none may be acknowledged.
    let mut to_old = Vec::new();
    for i in 0..3 {
        let client = cluster.client.clone();
        let url = cluster.url(old, &format!("/kv/orphan{i}"));
        to_old.push(tokio::spawn(async move {
            put_json(&client, &url, "lost").await
        }));
    }
    // A linearizable read on the cut-off leader cannot confirm its quorum.
    let (code, body) = get_json(&cluster.client, &cluster.url(old, "/kv/anything"))
        .await
        .unwrap();
    assert_eq!(
        (code, &body["code"]),
        (503, &json!("UNAVAILABLE")),
        "{body}"
    );
    let new = cluster.wait_leader(&majority, Duration::from_secs(5)).await;
    assert!(cut_at.elapsed() < Duration::from_secs(10));
    put_ok(&cluster.client, &cluster.url(new, "/kv/after-cut"), "ok").await;
    for write in to_old {
        let (code, body) = write.await.unwrap().expect("an HTTP answer");
        assert_ne!(code, 201, "the cut-off leader acknowledged a write: {body}");
        assert!(code == 503 || code == 504, "{code}: {body}");
    }

    partition.heal();
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(15))
        .await;
    assert_ne!(leader, old);
    let (code, body) = get_json(&cluster.client, &cluster.url(old, "/kv/after-cut"))
        .await
        .unwrap();
    assert_eq!((code, &body["value"]), (200, &json!("ok")));
    for i in 0..3 {
        let (code, _) = get_json(
            &cluster.client,
            &cluster.url(leader, &format!("/kv/orphan{i}")),
        )
        .await
        .unwrap();
        assert_eq!(
            code, 404,
            "a write the old leader could not commit must not appear"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_quorum_answers_no_leader() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .await;
    let survivor = others(&[1, 2, 3], leader)[0];
    cluster.kill(leader);
    cluster.kill(others(&[1, 2, 3], leader)[1]);
    // Once the survivor has given up on the dead leader, nothing can be served.
    eventually(
        Duration::from_secs(10),
        "the survivor to lose its leader",
        || async {
            let status = cluster.status(survivor).await?;
            status["leader_id"].is_null().then_some(())
        },
    )
    .await;
    let (code, body) = put_json(&cluster.client, &cluster.url(survivor, "/kv/k"), "v")
        .await
        .unwrap();
    assert_eq!((code, &body["code"]), (503, &json!("NO_LEADER")), "{body}");
    let (code, body) = get_json(&cluster.client, &cluster.url(survivor, "/kv/k"))
        .await
        .unwrap();
    assert_eq!((code, &body["code"]), (503, &json!("NO_LEADER")), "{body}");
    let (code, body) = get_json(&cluster.client, &cluster.url(survivor, "/ready"))
        .await
        .unwrap();
    assert_eq!((code, &body["code"]), (503, &json!("NOT_READY")), "{body}");
}

/// 64 and then 256 writes of 1 MiB at once, to the leader and to a follower: each
/// answers 201 or OVERLOADED at once, and the cluster keeps working (issue: such a
/// burst used to stop replication for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_1mib_writes_never_stop_the_cluster() {
    let cluster = Cluster::start(3, large_values::ENV);
    large_values::bursts_of_large_values(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_back_from_a_partition_leaves_leader_and_term_alone() {
    if !partitions_available() {
        return;
    }
    let cluster = Cluster::start_isolatable(3, 40, &[]);
    let back = harness::cut_off_a_follower_and_let_it_back(&cluster).await;
    let (leader, term) = back.before;
    for (id, seen) in &back.after {
        assert_eq!(
            *seen,
            (Some(leader), term),
            "node {id}: the returning follower changed leader or term"
        );
    }
    assert!(
        back.rounds_without_election >= 3.0,
        "the cut-off node's failed Pre-Vote rounds were not counted: {}",
        back.rounds_without_election
    );
    assert_eq!(back.leader_changes, 0.0, "no node may see a new leader");
}

/// The same scenario with Pre-Vote off deposes the leader: what the test above guards
/// against does happen without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pre_vote_a_follower_back_from_a_partition_deposes_the_leader() {
    if !partitions_available() {
        return;
    }
    let cluster = Cluster::start_isolatable(3, 50, &[("KV_RAFT_PRE_VOTE", "false")]);
    let back = harness::cut_off_a_follower_and_let_it_back(&cluster).await;
    let (_, term) = back.before;
    for (id, (_, seen_term)) in &back.after {
        assert!(
            *seen_term > term + 2,
            "node {id}: term {seen_term}, before the cut {term}: the inflated term should have forced an election"
        );
    }
    assert_eq!(back.rounds_without_election, 0.0);
    assert!(back.leader_changes >= 1.0, "{}", back.leader_changes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_majority_answers_no_leader_within_the_lease() {
    if !partitions_available() {
        return;
    }
    // Election timeout 500 ms: the lease is 1 s.
    let cluster = Cluster::start_isolatable(3, 60, &[]);
    let old = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .await;
    put_ok(&cluster.client, &cluster.url(old, "/kv/k"), "v").await;

    let partition = cluster.cut_off(old);
    let cut_at = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the cut-off leader to stop being ready",
        || async {
            let (code, _) = get_json(&cluster.client, &cluster.url(old, "/ready")).await?;
            (code == 503).then_some(())
        },
    )
    .await;
    let stepped_down = cut_at.elapsed();
    // The lease (1 s), plus slack for a loaded machine; far below the request timeout.
    assert!(
        stepped_down < Duration::from_millis(2500),
        "the cut-off leader kept serving for {stepped_down:?}"
    );
    let status = cluster.status(old).await.unwrap();
    assert!(status["leader_id"].is_null(), "{status}");
    // Its clients get NO_LEADER at once, not after server.request_timeout (3 s).
    for attempt in 0..3 {
        let asked = Instant::now();
        let (code, body) = put_json(&cluster.client, &cluster.url(old, "/kv/k"), "w")
            .await
            .unwrap();
        assert_eq!((code, &body["code"]), (503, &json!("NO_LEADER")), "{body}");
        let (code, body) = get_json(&cluster.client, &cluster.url(old, "/kv/k"))
            .await
            .unwrap();
        assert_eq!((code, &body["code"]), (503, &json!("NO_LEADER")), "{body}");
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "attempt {attempt}: answers took {:?}",
            asked.elapsed()
        );
    }
    // A stale read is still served from the local copy.
    let (code, body) = get_json(
        &cluster.client,
        &cluster.url(old, "/kv/k?consistency=stale"),
    )
    .await
    .unwrap();
    assert_eq!((code, &body["value"]), (200, &json!("v")));

    let majority = others(&[1, 2, 3], old);
    let new = cluster
        .wait_leader(&majority, Duration::from_secs(10))
        .await;
    put_ok(&cluster.client, &cluster.url(new, "/kv/k"), "new").await;
    partition.heal();
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(15))
        .await;
    assert_ne!(leader, old);
    cluster
        .wait_local_value(old, "k", "new", Duration::from_secs(15))
        .await;
}

/// A follower whose disk fills stops acknowledging (its log writes fail) but stays a
/// member; the leader and the other follower keep taking writes. The full node refuses
/// new values itself (507) and is not ready; once room is made it catches up by
/// itself, without a restart.
/// Three nodes, each with its data on a 64 MiB tmpfs of its own (the storage limits
/// off, so that a full disk is met for real); `None` without root.
fn cluster_on_small_disks() -> Option<(Cluster, BTreeMap<u64, support::SmallDisk>)> {
    let mut disks = BTreeMap::new();
    for id in 1..=3u64 {
        disks.insert(id, support::small_disk_or_skip("64m")?);
    }
    let node_env = disks
        .iter()
        .map(|(id, disk)| {
            let dir = disk.path().display().to_string();
            (*id, vec![("KV_STORAGE_DATA_DIR".to_string(), dir)])
        })
        .collect();
    let cluster = Cluster::start_with_node_env(
        3,
        &[
            ("KV_STORAGE_MIN_FREE_BYTES", "0"),
            ("KV_STORAGE_QUOTA_BYTES", "0"),
        ],
        node_env,
    );
    Some((cluster, disks))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_full_disk_stays_a_member_and_catches_up_once_there_is_room() {
    let Some((cluster, disks)) = cluster_on_small_disks() else {
        return;
    };
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .await;
    let full = others(&[1, 2, 3], leader)[0];
    let healthy = others(&[1, 2, 3], full);
    put_ok(&cluster.client, &cluster.url(full, "/kv/before"), "before").await;
    cluster
        .wait_local_value(full, "before", "before", Duration::from_secs(10))
        .await;

    disks[&full].fill();
    let keys: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let target = healthy[i % 2];
        put_ok(
            &cluster.client,
            &cluster.url(target, &format!("/kv/{key}")),
            key,
        )
        .await;
    }
    // The full node knows: not ready, refuses new values; it stays a member, behind.
    eventually(
        Duration::from_secs(10),
        "the full node to be not ready",
        || async {
            let (code, body) = get_json(&cluster.client, &cluster.url(full, "/ready")).await?;
            (code == 503 && body["error"].as_str()?.contains("disk is full")).then_some(())
        },
    )
    .await;
    let (code, body) = put_json(&cluster.client, &cluster.url(full, "/kv/refused"), "x")
        .await
        .expect("an answer");
    assert_eq!(
        (code, body["code"].as_str()),
        (507, Some("NO_SPACE")),
        "{body}"
    );
    let status = cluster.status(leader).await.expect("leader status");
    let behind = status["followers"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["id"] == full))
        .unwrap_or_else(|| panic!("node {full} is no longer a follower: {status}"));
    assert!(behind["lag"].as_u64() > Some(0), "{status}");
    let (_, members) = get_json(&cluster.client, &cluster.url(leader, "/cluster/members"))
        .await
        .expect("members");
    assert!(
        members.to_string().contains(&format!("\"id\":{full}")),
        "{members}"
    );
    assert_all_readable(&cluster, &healthy, &keys).await;

    // Room again: it catches up by itself.
    disks[&full].free();
    cluster
        .wait_local_value(full, "f39", "f39", Duration::from_secs(30))
        .await;
    assert_all_readable(&cluster, &[full], &keys).await;
    eventually(
        Duration::from_secs(10),
        "the full node to be ready",
        || async {
            let (code, _) = get_json(&cluster.client, &cluster.url(full, "/ready")).await?;
            (code == 200).then_some(())
        },
    )
    .await;
    put_ok(&cluster.client, &cluster.url(full, "/kv/after"), "after").await;
}

/// A leader whose disk fills cannot append or apply: it hands leadership to a follower,
/// and the cluster goes on taking writes; once room is made it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_with_a_full_disk_hands_over_and_the_cluster_keeps_taking_writes() {
    let Some((cluster, disks)) = cluster_on_small_disks() else {
        return;
    };
    let full = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .await;
    let healthy = others(&[1, 2, 3], full);
    put_ok(&cluster.client, &cluster.url(full, "/kv/before"), "before").await;

    disks[&full].fill();
    // Values through the healthy nodes until the full leader's disk refuses one and it
    // hands over: some writes fail meanwhile; then a new leader takes them.
    let value = "v".repeat(64 * 1024);
    let mut i = 0;
    let leader = eventually(
        Duration::from_secs(60),
        "a healthy leader after the leader's disk filled",
        || {
            i += 1;
            let via = healthy[i % 2];
            let url = cluster.url(via, &format!("/kv/fill{i}"));
            let (client, value) = (cluster.client.clone(), value.clone());
            let status_url = cluster.url(via, "/status");
            async move {
                let _ = put_json(&client, &url, &value).await;
                let (_, status) = get_json(&client, &status_url).await?;
                let leader = status["leader_id"].as_u64()?;
                (leader != full).then_some(leader)
            }
        },
    )
    .await;
    assert!(healthy.contains(&leader), "{leader}");
    let keys: Vec<String> = (0..20).map(|i| format!("h{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        put_ok(
            &cluster.client,
            &cluster.url(healthy[i % 2], &format!("/kv/{key}")),
            key,
        )
        .await;
    }
    assert_all_readable(&cluster, &healthy, &keys).await;

    // Room again: the old leader catches up by itself.
    disks[&full].free();
    cluster
        .wait_local_value(full, "h19", "h19", Duration::from_secs(30))
        .await;
    assert_all_readable(&cluster, &[full], &keys).await;
}
