//! The PostgreSQL backend against a real PostgreSQL in a container: openraft's storage
//! suite, crash safety, an outage under load, start-up errors, and a cluster of three
//! nodes sharing one server.

mod support;

#[path = "cluster/harness.rs"]
mod harness;
#[path = "cluster/large_values.rs"]
mod large_values;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvstore::config::Settings;
use kvstore::raft::TypeConfig;
use kvstore::store::postgres::{self, PgLogStore, PgStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use support::postgres::{PgServer, PASSWORD};
use support::{eventually, get_json, put_json, run_to_exit, wait_ready, NodeProcess};

/// Each suite case gets a fresh database on the shared server and a fresh data dir.
struct Builder<'a> {
    server: &'a PgServer,
}

impl StoreBuilder<TypeConfig, PgLogStore, PgStateMachine, tempfile::TempDir> for Builder<'_> {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, PgLogStore, PgStateMachine), StorageError<TypeConfig>> {
        let database = self.server.create_database().await;
        let mut settings = Settings::load_from(None, |_| None).expect("defaults");
        self.server.configure(&mut settings, &database);
        let dir = tempfile::tempdir().expect("temp dir");
        let store = postgres::open(&settings.database, dir.path())
            .await
            .expect("open the PostgreSQL store");
        Ok((dir, store.log_store, store.state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_on_postgres() {
    let Some(server) = PgServer::start().await else {
        return;
    };
    Suite::test_all(Builder { server: &server })
        .await
        .expect("storage suite");
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_loses_no_acknowledged_write_on_postgres() {
    let Some(server) = PgServer::start().await else {
        return;
    };
    let database = server.create_database().await;
    let env = server.env(&database);
    let dir = tempfile::tempdir().unwrap();
    support::sigkill_during_writes_loses_nothing(dir.path(), &env_refs(&env)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_answers_503_and_the_node_resumes_by_itself() {
    let Some(server) = PgServer::start().await else {
        return;
    };
    let database = server.create_database().await;
    let mut env = server.env(&database);
    env.push(("KV_SERVER_REQUEST_TIMEOUT".into(), "2s".into()));
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), &env_refs(&env));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    wait_ready(&node, &client).await;

    // A writer under load the whole time; every 201 is recorded.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let codes = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let stop = Arc::new(Mutex::new(false));
    let writer = {
        let (client, acked, codes, stop) =
            (client.clone(), acked.clone(), codes.clone(), stop.clone());
        let url = node.url("/kv/");
        tokio::spawn(async move {
            for i in 0.. {
                if *stop.lock().unwrap() {
                    return;
                }
                let key = format!("o{i}");
                match put_json(&client, &format!("{url}{key}"), &key).await {
                    Some((201, _)) => acked.lock().unwrap().push(key),
                    Some((_, body)) => {
                        let code = body["code"].as_str().unwrap_or("?").to_string();
                        *codes.lock().unwrap().entry(code).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    None => panic!("no HTTP answer: the node must not crash"),
                }
            }
        })
    };
    eventually(
        Duration::from_secs(20),
        "writes before the outage",
        || async { (acked.lock().unwrap().len() >= 50).then_some(()) },
    )
    .await;

    server.stop().await;
    // Requests fail fast with the documented code while the database is away...
    eventually(
        Duration::from_secs(20),
        "503 STORAGE_UNAVAILABLE",
        || async {
            let (code, body) = put_json(&client, &node.url("/kv/probe"), "x").await?;
            (code == 503 && body["code"] == "STORAGE_UNAVAILABLE").then_some(())
        },
    )
    .await;
    let started = std::time::Instant::now();
    let (code, body) = put_json(&client, &node.url("/kv/probe"), "x")
        .await
        .unwrap();
    assert_eq!(
        (code, body["code"].as_str()),
        (503, Some("STORAGE_UNAVAILABLE"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "503 must come at once, not after a timeout"
    );
    let (code, _) = get_json(&client, &node.url("/health"))
        .await
        .expect("the node is alive");
    assert_eq!(code, 200);
    let (code, body) = get_json(&client, &node.url("/ready")).await.unwrap();
    assert_eq!((code, body["code"].as_str()), (503, Some("NOT_READY")));

    // ...and succeed again once it is back, without restarting the node.
    server.start_again().await;
    let before = acked.lock().unwrap().len();
    eventually(
        Duration::from_secs(30),
        "writes after the outage",
        || async { (acked.lock().unwrap().len() >= before + 50).then_some(()) },
    )
    .await;
    *stop.lock().unwrap() = true;
    writer.await.unwrap();
    assert!(node.child.id() > 0);

    let keys = acked.lock().unwrap().clone();
    for key in &keys {
        let (code, body) = get_json(&client, &node.url(&format!("/kv/{key}")))
            .await
            .unwrap();
        assert_eq!(code, 200, "acknowledged {key} lost: {body}");
    }
    // The writer may have been waiting out a timeout during the whole outage, so only
    // the kinds of its errors are checked; the probes above checked the code itself.
    let codes = codes.lock().unwrap().clone();
    assert!(
        codes
            .keys()
            .all(|c| ["STORAGE_UNAVAILABLE", "TIMEOUT", "OUTCOME_UNKNOWN"].contains(&c.as_str())),
        "unexpected error codes during the outage: {codes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_or_host_exit_non_zero_without_the_password() {
    let Some(server) = PgServer::start().await else {
        return;
    };
    let database = server.create_database().await;
    let dir = tempfile::tempdir().unwrap();

    let mut env = server.env(&database);
    env.retain(|(k, _)| k != "KV_DB_PASSWORD");
    env.push(("KV_DB_PASSWORD".into(), "not-the-password".into()));
    let (status, stdout, stderr) = run_to_exit(dir.path(), &env_refs(&env), &[]);
    assert!(!status.success());
    assert!(
        stderr.contains("database.host") && stderr.contains("database.username"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-password") && !stdout.contains("not-the-password"));

    let mut env = server.env(&database);
    env.retain(|(k, _)| k != "KV_DB_PORT");
    env.push(("KV_DB_PORT".into(), "1".into()));
    let (status, stdout, stderr) = run_to_exit(dir.path(), &env_refs(&env), &[]);
    assert!(!status.success());
    assert!(stderr.contains("database.host"), "{stderr}");
    assert!(!stderr.contains(PASSWORD) && !stdout.contains(PASSWORD));
}

/// For nodes 1 to `n`: settings that give each its own database on `server`.
async fn own_databases(server: &PgServer, n: u64) -> BTreeMap<u64, Vec<(String, String)>> {
    let mut node_env = BTreeMap::new();
    for id in 1..=n {
        let database = server.create_database().await;
        node_env.insert(id, server.env(&database));
    }
    node_env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_sharing_one_server_form_a_cluster() {
    let Some(server) = PgServer::start().await else {
        return;
    };
    let node_env = own_databases(&server, 3).await;
    let cluster = harness::Cluster::start_with_node_env(3, &[], node_env);
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .await;
    let follower = if leader == 1 { 2 } else { 1 };
    let (code, body) = put_json(&cluster.client, &cluster.url(follower, "/kv/shared"), "pg")
        .await
        .unwrap();
    assert_eq!(code, 201, "{body}");
    for id in [1, 2, 3] {
        let (code, body) = get_json(&cluster.client, &cluster.url(id, "/kv/shared"))
            .await
            .unwrap();
        assert_eq!(
            (code, body["value"].as_str()),
            (200, Some("pg")),
            "node {id}"
        );
        let status = cluster.status(id).await.unwrap();
        assert_eq!(status["storage_type"], "database");
    }
    let resp = cluster
        .client
        .delete(cluster.url(leader, "/kv/shared"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for id in [1, 2, 3] {
        let (code, _) = get_json(&cluster.client, &cluster.url(id, "/kv/shared"))
            .await
            .unwrap();
        assert_eq!(code, 404, "node {id}");
    }
}

/// The bursts of 1 MiB writes of the cluster tests, on three nodes each with its own
/// database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_1mib_writes_never_stop_a_postgres_cluster() {
    let Some(server) = PgServer::start().await else {
        return;
    };
    let node_env = own_databases(&server, 3).await;
    let cluster = harness::Cluster::start_with_node_env(3, large_values::ENV, node_env);
    large_values::bursts_of_large_values(&cluster).await;
}

/// A storage failure that is not an outage (here, a table dropped under the node) is a
/// JSON 500 `INTERNAL`, never a crash or an HTML page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_database_answers_internal() {
    let Some(server) = PgServer::start().await else {
        return;
    };
    let database = server.create_database().await;
    let env = server.env(&database);
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), &env_refs(&env));
    let client = reqwest::Client::new();
    wait_ready(&node, &client).await;
    let (code, _) = put_json(&client, &node.url("/kv/k"), "v").await.unwrap();
    assert_eq!(code, 201);

    server.execute(&database, "DROP TABLE kv").await;
    let (code, body) = get_json(&client, &node.url("/kv/k?consistency=stale"))
        .await
        .unwrap();
    assert_eq!(
        (code, body["code"].as_str()),
        (500, Some("INTERNAL")),
        "{body}"
    );
    let (code, _) = get_json(&client, &node.url("/health")).await.unwrap();
    assert_eq!(code, 200, "the node stays up");
}

/// A database that lost applies, as PostgreSQL does when it crashes before flushing
/// commits made with `synchronous_commit` off, is noticed at the next apply: the node
/// acknowledges nothing more instead of building on the hole, and a restart applies the
/// missing entries again from its Raft log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_applies_stop_the_node_until_a_restart_applies_them_again() {
    let Some(server) = PgServer::start().await else {
        return;
    };
    let database = server.create_database().await;
    let mut env = server.env(&database);
    env.push(("KV_SERVER_REQUEST_TIMEOUT".into(), "3s".into()));
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut node = NodeProcess::start(dir.path(), &env_refs(&env));
    wait_ready(&node, &client).await;
    for i in 0..20 {
        let (code, _) = put_json(&client, &node.url(&format!("/kv/k{i}")), &format!("v{i}"))
            .await
            .unwrap();
        assert_eq!(code, 201);
    }

    // What such a crash leaves: an older last applied id, and the data without the
    // latest applies.
    server
        .execute(
            &database,
            "UPDATE sm_meta SET value = convert_to('null', 'UTF8') WHERE name = 'last_applied'",
        )
        .await;
    server.execute(&database, "DELETE FROM kv").await;
    let (code, body) = put_json(&client, &node.url("/kv/after"), "x")
        .await
        .unwrap();
    assert_eq!(
        (code, body["code"].as_str()),
        (503, Some("UNAVAILABLE")),
        "a write on a database that lost applies: {body}"
    );
    eventually(
        Duration::from_secs(10),
        "the log line naming the cause",
        || async {
            node.logged_containing("PostgreSQL lost recent commits")
                .then_some(())
        },
    )
    .await;
    // From then on, requests are refused at once.
    let started = std::time::Instant::now();
    let (code, body) = put_json(&client, &node.url("/kv/later"), "x")
        .await
        .unwrap();
    assert_eq!(
        (code, body["code"].as_str()),
        (503, Some("UNAVAILABLE")),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    node.signal("KILL");
    node.wait_exit(Duration::from_secs(10));
    let node = NodeProcess::start(dir.path(), &env_refs(&env));
    wait_ready(&node, &client).await;
    for i in 0..20 {
        let (code, body) = get_json(&client, &node.url(&format!("/kv/k{i}")))
            .await
            .unwrap();
        assert_eq!(
            (code, body["value"].as_str()),
            (200, Some(&*format!("v{i}")))
        );
    }
    let (code, _) = put_json(&client, &node.url("/kv/after"), "y")
        .await
        .unwrap();
    assert_eq!(code, 201);
}

/// The partition scenario of the cluster tests on PostgreSQL: with Pre-Vote (the
/// default) a follower back from a partition leaves leader and term alone; with it off,
/// the same return deposes the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_back_from_a_partition_leaves_the_leader_alone_on_postgres() {
    if !harness::can_partition() {
        assert!(
            std::env::var_os("KV_REQUIRE_NET_FAULTS").is_none(),
            "KV_REQUIRE_NET_FAULTS is set but iptables cannot be used"
        );
        eprintln!("SKIPPED: cutting traffic needs root and iptables");
        return;
    }
    let Some(server) = PgServer::start().await else {
        return;
    };
    for (pre_vote, first_octet) in [("true", 70), ("false", 80)] {
        let mut node_env = BTreeMap::new();
        for id in 1..=3 {
            let database = server.create_database().await;
            node_env.insert(id, server.env(&database));
        }
        let cluster = harness::Cluster::start_isolatable_with_node_env(
            3,
            first_octet,
            &[("KV_RAFT_PRE_VOTE", pre_vote)],
            node_env,
        );
        let back = harness::cut_off_a_follower_and_let_it_back(&cluster).await;
        let (leader, term) = back.before;
        for (id, seen) in &back.after {
            if pre_vote == "true" {
                assert_eq!(*seen, (Some(leader), term), "node {id} with Pre-Vote");
            } else {
                assert!(
                    seen.1 > term + 2,
                    "node {id} without Pre-Vote: {seen:?}, before {term}"
                );
            }
        }
    }
}
