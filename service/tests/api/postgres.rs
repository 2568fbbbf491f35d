//! The PostgreSQL backend against a real PostgreSQL in a container: openraft's storage
//! suite, crash safety, an outage under load, start-up errors, and a cluster of three
//! nodes sharing one server.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::postgres::{PgServer, PASSWORD};
use crate::support::{
    eventually, get_json, harness, large_values, put_json, run_to_exit, wait_ready, NodeProcess,
};
use futures::StreamExt;
use kvstore::config::Settings;
use kvstore::raft::TypeConfig;
use kvstore::store::{postgres, LogStore, Postgres, StateMachine, Store};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

/// Each suite case gets a fresh database on the shared server and a fresh data dir.
struct Builder<'a> {
    server: &'a PgServer,
}

/// The store is the wrapper the node runs on, over the PostgreSQL backend alone.
impl StoreBuilder<TypeConfig, LogStore<Postgres>, StateMachine<Postgres>, tempfile::TempDir>
    for Builder<'_>
{
    async fn build(
        &self,
    ) -> Result<
        (
            tempfile::TempDir,
            LogStore<Postgres>,
            StateMachine<Postgres>,
        ),
        StorageError<TypeConfig>,
    > {
        let database = self.server.create_database().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_store(self.server, &database, dir.path()).await;
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
    crate::support::sigkill_during_writes_loses_nothing(dir.path(), &env_refs(&env)).await;
}

/// A writer that puts `<url><i>` (the key as its value) until `stop`, recording every
/// acknowledged key and counting the errors by code; it fails the test if the node
/// stops answering.
fn spawn_writer(
    client: &reqwest::Client,
    url: String,
    acked: &Arc<Mutex<Vec<String>>>,
    codes: &Arc<Mutex<BTreeMap<String, usize>>>,
    stop: &Arc<Mutex<bool>>,
) -> tokio::task::JoinHandle<()> {
    let (client, acked, codes, stop) = (client.clone(), acked.clone(), codes.clone(), stop.clone());
    let prefix = url.rsplit('/').next().unwrap_or_default().to_string();
    tokio::spawn(async move {
        for i in 0.. {
            if *stop.lock().unwrap() {
                return;
            }
            let key = format!("{prefix}{i}");
            match put_json(&client, &format!("{url}{i}"), &key).await {
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
}

/// Waits until `more` writes beyond those acknowledged so far are acknowledged.
async fn wait_for_more_acks(acked: &Arc<Mutex<Vec<String>>>, more: usize, what: &str) {
    let before = acked.lock().unwrap().len();
    eventually(Duration::from_secs(30), what, || async {
        (acked.lock().unwrap().len() >= before + more).then_some(())
    })
    .await;
}

/// A ready node on a new database of `server`, with `server.request_timeout`; a client
/// that waits up to 10 s; the database's name; the node's data dir.
async fn start_node(
    server: &PgServer,
    request_timeout: &str,
) -> (NodeProcess, reqwest::Client, String, tempfile::TempDir) {
    let database = server.create_database().await;
    let mut env = server.env(&database);
    env.push(("KV_SERVER_REQUEST_TIMEOUT".into(), request_timeout.into()));
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), &env_refs(&env));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    wait_ready(&node, &client).await;
    (node, client, database, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_answers_503_and_the_node_resumes_by_itself() {
    let Some(server) = PgServer::start().await else {
        return;
    };
    let (node, client, _database, _dir) = start_node(&server, "2s").await;

    // A writer under load the whole time; every 201 is recorded.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let codes = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let stop = Arc::new(Mutex::new(false));
    let writer = spawn_writer(&client, node.url("/kv/o"), &acked, &codes, &stop);
    wait_for_more_acks(&acked, 50, "writes before the outage").await;

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
    wait_for_more_acks(&acked, 50, "writes after the outage").await;
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
/// commits made with `synchronous_commit` off: the node applies the missing entries
/// again from its Raft log by itself, before it serves a read (openraft's applied index
/// is in memory and would let a stale read through) or builds on the hole, with one
/// log line and no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_applies_are_applied_again_without_a_restart() {
    let Some(server) = PgServer::start().await else {
        return;
    };
    let (node, client, database, _dir) = start_node(&server, "3s").await;
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
    // A read first: no apply has noticed anything yet.
    let (code, body) = get_json(&client, &node.url("/kv/k19")).await.unwrap();
    assert_eq!(
        (code, body["value"].as_str()),
        (200, Some("v19")),
        "a read on a database that lost applies: {body}"
    );
    for i in 0..20 {
        let (code, body) = get_json(&client, &node.url(&format!("/kv/k{i}")))
            .await
            .unwrap();
        assert_eq!(
            (code, body["value"].as_str()),
            (200, Some(&*format!("v{i}")))
        );
    }
    assert!(node.logged_containing("PostgreSQL lost applies"));

    // And a write, after the same loss again.
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
    assert_eq!(code, 201, "a write on a database that lost applies: {body}");
    let mut keys = server.keys(&database).await;
    keys.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    expected.push("after".into());
    expected.sort();
    assert_eq!(keys, expected, "the lost applies are back in the database");
}

/// PostgreSQL killed with SIGKILL under write load, several times: the node serves
/// again by itself each time, and every acknowledged write is read back (linearizable)
/// after each recovery, with its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_under_load_loses_nothing_and_the_node_heals_itself() {
    let Some(server) = PgServer::start().await else {
        return;
    };
    let (node, client, _database, _dir) = start_node(&server, "2s").await;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(Mutex::new(false));
    let codes = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            spawn_writer(
                &client,
                node.url(&format!("/kv/w{w}-")),
                &acked,
                &codes,
                &stop,
            )
        })
        .collect();
    for round in 0..3 {
        wait_for_more_acks(&acked, 100, "writes before the kill").await;
        server.kill().await;
        server.start_again().await;
        wait_for_more_acks(&acked, 50, "writes after PostgreSQL is back").await;
        let keys = acked.lock().unwrap().clone();
        // A read may time out under load (503/504: asked again); a 404 or another
        // value is a lost or stale write.
        let reads = futures::stream::iter(keys.iter().map(|key| {
            let (client, url) = (client.clone(), node.url(&format!("/kv/{key}")));
            async move {
                let answer = eventually(Duration::from_secs(20), "an answer", || async {
                    let (code, body) = get_json(&client, &url).await?;
                    (code < 500).then_some((code, body))
                })
                .await;
                (key, answer)
            }
        }))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
        for (key, (code, body)) in reads {
            assert_eq!(
                (code, body["value"].as_str()),
                (200, Some(key.as_str())),
                "round {round}: acknowledged {key} lost or stale: {body}"
            );
        }
    }
    *stop.lock().unwrap() = true;
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(node.child.id() > 0);
}

/// Log entries for driving the PostgreSQL store directly.
fn put_entries(range: std::ops::RangeInclusive<u64>) -> Vec<kvstore::raft::typ::Entry> {
    use openraft::entry::RaftEntry;
    let leader = openraft::impls::leader_id_adv::LeaderId {
        term: 1,
        node_id: 1,
    };
    range
        .map(|i| {
            let command = kvstore::store::Command::put(format!("k{i:02}"), format!("v{i}"));
            kvstore::raft::typ::Entry::new_normal(
                kvstore::raft::typ::LogId::new(leader, i),
                kvstore::store::Proposal {
                    command,
                    trace: None,
                },
            )
        })
        .collect()
}

async fn open_store(server: &PgServer, database: &str, dir: &std::path::Path) -> Store<Postgres> {
    let mut settings = Settings::load_from(None, |_| None).expect("defaults");
    server.configure(&mut settings, database);
    let disk_full = Arc::new(kvstore::store::DiskFull::default());
    let opened = postgres::open(&settings.database, dir, disk_full.clone())
        .await
        .expect("open the PostgreSQL store");
    Store::new(opened, disk_full)
}

async fn apply(sm: &mut StateMachine<Postgres>, entries: Vec<kvstore::raft::typ::Entry>) {
    use openraft::storage::RaftStateMachine;
    let items = entries.into_iter().map(|e| Ok((e, None)));
    sm.apply(futures::stream::iter(items)).await.expect("apply");
}

/// An apply whose first attempt fails (PostgreSQL is down) is retried; the retry must
/// still expect the last applied id this node wrote. Finding an older one (PostgreSQL
/// crashed and lost applies), it applies the lost entries again from the log instead
/// of building on the hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_apply_never_builds_on_lost_applies() {
    use openraft::storage::{IOFlushed, RaftLogStorage};
    let Some(server) = PgServer::start().await else {
        return;
    };
    let database = server.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&server, &database, dir.path()).await;
    let (mut log, mut sm, handle) = (store.log_store, store.state_machine, store.handle);
    let entries = put_entries(1..=12);
    log.append(entries.clone(), IOFlushed::noop())
        .await
        .unwrap();
    apply(&mut sm, entries[..10].to_vec()).await;

    // What a crash of PostgreSQL leaves: last applied back at 5, keys 6-10 gone.
    let id5 = serde_json::to_string(&Some(entries[4].log_id)).unwrap();
    server
        .execute_owned(
            &database,
            format!(
                "UPDATE sm_meta SET value = convert_to('{id5}', 'UTF8') WHERE name = 'last_applied'"
            ),
        )
        .await;
    server
        .execute(
            &database,
            "DELETE FROM kv WHERE key IN ('k06', 'k07', 'k08', 'k09', 'k10')",
        )
        .await;
    server.stop().await;
    let rest = entries[10..].to_vec();
    let applying = tokio::spawn(async move {
        apply(&mut sm, rest).await;
    });
    crate::support::eventually(
        Duration::from_secs(30),
        "the apply failing on the stopped server",
        || async { (!handle.is_available()).then_some(()) },
    )
    .await;
    server.start_again().await;
    tokio::time::timeout(Duration::from_secs(60), applying)
        .await
        .expect("the apply finishes once PostgreSQL is back")
        .unwrap();
    let expected: Vec<String> = (1..=12).map(|i| format!("k{i:02}")).collect();
    assert_eq!(server.keys(&database).await, expected);
}

/// Log appends and votes wait for their WAL flush whatever the server's
/// `synchronous_commit` says: after PostgreSQL is killed, every append that returned
/// is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_appends_and_votes_survive_a_postgres_crash_with_synchronous_commit_off() {
    use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
    let Some(server) = PgServer::start().await else {
        return;
    };
    let database = server.create_database().await;
    server
        .execute("postgres", "ALTER SYSTEM SET synchronous_commit = off")
        .await;
    // The WAL writer would otherwise flush asynchronous commits within 200 ms.
    server
        .execute("postgres", "ALTER SYSTEM SET wal_writer_delay = '10s'")
        .await;
    server.execute("postgres", "SELECT pg_reload_conf()").await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&server, &database, dir.path()).await;
    let mut log = store.log_store;
    let entries = put_entries(1..=20);
    for chunk in entries.chunks(5) {
        log.append(chunk.to_vec(), IOFlushed::noop()).await.unwrap();
    }
    let vote = kvstore::raft::typ::Vote::new(3, 1);
    log.save_vote(&vote).await.unwrap();
    server.kill().await;
    store.handle.close().await.expect("close the pool");
    server.start_again().await;

    let store = open_store(&server, &database, dir.path()).await;
    let mut log = store.log_store;
    let read = log.try_get_log_entries(0..100).await.unwrap();
    let indexes: Vec<u64> = read.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, (1..=20).collect::<Vec<_>>(), "appends lost");
    assert_eq!(log.read_vote().await.unwrap(), Some(vote), "vote lost");
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

/// A range is in byte order of the keys whatever the database's collation (upper case
/// before lower case, `é` after `z`), bounded to `[start, end)` and limited, with
/// deleted keys left out; the same order the embedded store gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_is_in_byte_order_bounded_and_limited_on_postgres() {
    use openraft::entry::RaftEntry;
    let Some(server) = PgServer::start().await else {
        return;
    };
    // The test server's databases sort in byte order already (SQL_ASCII); a database
    // with a linguistic collation (ICU's root: `a` before `B`) is what a server
    // initialised with a locale gives.
    let database = "range_icu";
    server
        .execute(
            "postgres",
            "CREATE DATABASE range_icu TEMPLATE template0 ENCODING 'UTF8' \
             LOCALE 'C' LOCALE_PROVIDER icu ICU_LOCALE 'und'",
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(&server, database, dir.path()).await;
    let handle = store.handle.clone();
    assert!(handle
        .range("", None, 10, usize::MAX)
        .await
        .unwrap()
        .is_empty());

    let leader = openraft::impls::leader_id_adv::LeaderId {
        term: 1,
        node_id: 1,
    };
    let entry = |index: u64, command: kvstore::store::Command| {
        kvstore::raft::typ::Entry::new_normal(
            kvstore::raft::typ::LogId::new(leader, index),
            kvstore::store::Proposal {
                command,
                trace: None,
            },
        )
    };
    let keys = [
        "b", "B", "a", "a b", "a-b", "ab", "Z", "z", "\u{e9}", "gone",
    ];
    let mut entries: Vec<_> = keys
        .iter()
        .zip(1..)
        .map(|(key, i)| {
            let command = kvstore::store::Command::put(key.to_string(), format!("v{i}"));
            entry(i, command)
        })
        .collect();
    entries.push(entry(11, kvstore::store::Command::delete("gone")));
    apply(&mut store.state_machine, entries).await;
    let model: BTreeMap<String, String> = keys
        .iter()
        .zip(1..)
        .filter(|(key, _)| **key != "gone")
        .map(|(key, i)| (key.to_string(), format!("v{i}")))
        .collect();

    let bounds = [
        "",
        "B",
        "a",
        "a-",
        "ab",
        "b",
        "c",
        "z",
        "\u{e9}",
        "\u{10ffff}",
    ];
    for start in bounds {
        for end in bounds.iter().map(|e| Some(*e)).chain([None]) {
            for limit in [0, 1, 3, 100] {
                let expected: Vec<(String, String)> = model
                    .iter()
                    .filter(|(k, _)| k.as_str() >= start && end.is_none_or(|e| k.as_str() < e))
                    .take(limit)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let page = handle.range(start, end, limit, usize::MAX).await.unwrap();
                assert_eq!(
                    values(page),
                    expected,
                    "range [{start:?}, {end:?}) limit {limit}"
                );
            }
        }
    }
    let all: Vec<String> = handle
        .range("", None, 100, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        all,
        ["B", "Z", "a", "a b", "a-b", "ab", "b", "z", "\u{e9}"],
        "byte order"
    );
    // A page also ends with the pair that brings its keys and values to `max_bytes`.
    let ordered: Vec<(String, String)> = model.clone().into_iter().collect();
    let size = |pairs: &[(String, String)]| pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
    let two: usize = size(&ordered[..2]);
    for (max_bytes, pairs) in [(1, 1), (two - 1, 2), (two, 2), (two + 1, 3)] {
        assert_eq!(
            values(handle.range("", None, 100, max_bytes).await.unwrap()),
            ordered[..pairs],
            "max_bytes {max_bytes}"
        );
    }
    for start in bounds {
        for end in bounds.iter().map(|e| Some(*e)).chain([None]) {
            let expected = model
                .keys()
                .filter(|k| k.as_str() >= start && end.is_none_or(|e| k.as_str() < e))
                .count() as u64;
            assert_eq!(
                handle.count_range(start, end).await.unwrap(),
                expected,
                "count of [{start:?}, {end:?})"
            );
        }
    }

    // The key index is in byte order (the migration to `COLLATE "C"`), so a range
    // bounds the index scan (`Index Cond`); an index in the
    // database's linguistic collation, as `kv.key` had before, could only be read
    // whole and filtered.
    let plan = server
        .plan_without_seqscan(
            database,
            "SELECT key FROM kv WHERE key COLLATE \"C\" >= 'a' AND key COLLATE \"C\" < 'b' \
             ORDER BY key COLLATE \"C\" LIMIT 10",
        )
        .await;
    assert!(
        plan.contains("Index Cond"),
        "the range is not served by the key index:\n{plan}"
    );
    server
        .execute(database, "CREATE TABLE linguistic (key TEXT PRIMARY KEY)")
        .await;
    let plan = server
        .plan_without_seqscan(
            database,
            "SELECT key FROM linguistic WHERE key COLLATE \"C\" >= 'a' \
             AND key COLLATE \"C\" < 'b' ORDER BY key COLLATE \"C\" LIMIT 10",
        )
        .await;
    assert!(
        !plan.contains("Index Cond"),
        "this check cannot tell the collations apart:\n{plan}"
    );

    // A range delete in byte order, in log order with the writes around it: `a` to
    // `b` takes the lower-case a-keys, not `B` or `Z`; `a c` is written after it.
    let range_delete = |index, start: &str, end: Option<&str>| {
        let command = kvstore::store::Command::DeleteRange {
            start: start.into(),
            end: end.map(Into::into),
        };
        entry(index, command)
    };
    let put = |index, key: &str| {
        let command = kvstore::store::Command::put(key, "new");
        entry(index, command)
    };
    apply(
        &mut store.state_machine,
        vec![
            put(12, "a0"),
            range_delete(13, "a", Some("b")),
            put(14, "a c"),
            range_delete(15, "\u{e9}", None),
        ],
    )
    .await;
    let all: Vec<String> = handle
        .range("", None, 100, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(all, ["B", "Z", "a c", "b", "z"], "after the range deletes");
    assert_eq!(handle.count_range("a", Some("b")).await.unwrap(), 1);
}

/// A page's keys and values, without their revisions.
fn values(pairs: Vec<(String, kvstore::types::Record)>) -> Vec<(String, String)> {
    pairs.into_iter().map(|(k, r)| (k, r.value)).collect()
}
