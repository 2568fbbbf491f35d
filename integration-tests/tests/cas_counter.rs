//! Compare-and-set on three kvstore processes: 16 clients, spread over the three nodes,
//! each increment one counter 200 times by reading it and writing the value plus one
//! with `If-Match` on the revision read (retrying from the read on 412). The final
//! linearizable read must be exactly 3,200, and the history of reads and conditional
//! writes must be linearizable. `KV_CAS_COUNTER_INCREMENTS` sets another number of
//! increments per client. The report and history go to
//! `target/integration-tests/cas-counter/`.
//!
//! A round (read, then write) takes a few milliseconds on an idle machine; the run is
//! bounded by 120 s, which a machine whose rounds take 35 ms (seen on two cores at a
//! load average of 20) does not meet.

mod processes;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use integration_tests::counter::{self, revisions_agree};
use integration_tests::history::{Kind, Outcome};
use integration_tests::report::Report;
use processes::{clean_command, eventually, free_port, kvstore_bin, leader_of, Process};

const CLIENTS: u32 = 16;
/// Per client; `KV_CAS_COUNTER_INCREMENTS` sets another number.
const INCREMENTS: u32 = 200;

/// Three nodes on loopback that form a cluster by themselves.
struct Cluster {
    nodes: Vec<Process>,
    apis: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: BTreeMap<u64, (u16, u16)> =
            (1..=3).map(|id| (id, (free_port(), free_port()))).collect();
        let members = ports
            .iter()
            .map(|(id, (api, raft))| format!("{id}=http://127.0.0.1:{api}|http://127.0.0.1:{raft}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        let mut apis = Vec::new();
        for (id, (api, raft)) in &ports {
            let mut command = clean_command(kvstore_bin());
            command
                .env("KV_RAFT_NODE_ID", id.to_string())
                .env("KV_SERVER_HOST", "127.0.0.1")
                .env("KV_SERVER_PORT", api.to_string())
                .env("KV_CLUSTER_RAFT_HOST", "127.0.0.1")
                .env("KV_CLUSTER_RAFT_PORT", raft.to_string())
                .env("KV_CLUSTER_INITIAL_MEMBERS", &members)
                .env("KV_CLUSTER_INSECURE", "true")
                .env("KV_STORAGE_DATA_DIR", dir.path().join(format!("node{id}")))
                // Every client of a node, and those forwarded to the leader, served at
                // once: an OVERLOADED refusal would only slow the run down.
                .env("KV_SERVER_MAX_IN_FLIGHT", "64")
                .env("KV_LOG_LEVEL", "warn");
            nodes.push(Process::spawn(&format!("node{id}"), command, dir.path()));
            apis.push(format!("http://127.0.0.1:{api}"));
        }
        Cluster {
            nodes,
            apis,
            _dir: dir,
        }
    }

    /// Waits until all three nodes name the same leader and each serves a read.
    async fn ready(&self) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        eventually(
            Duration::from_secs(60),
            "a leader all nodes agree on",
            || async {
                let mut seen = BTreeSet::new();
                for api in &self.apis {
                    seen.insert(leader_of(&client, api, None).await?);
                }
                (seen.len() == 1).then_some(())
            },
        )
        .await;
        for api in &self.apis {
            eventually(
                Duration::from_secs(30),
                &format!("{api} to serve a read"),
                || async {
                    let resp = client.get(format!("{api}/kv/warm-up")).send().await.ok()?;
                    (resp.status().as_u16() == 404).then_some(())
                },
            )
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cas_increments_from_16_clients_add_up_and_are_linearizable() {
    let cluster = Cluster::start();
    cluster.ready().await;

    let increments = std::env::var("KV_CAS_COUNTER_INCREMENTS")
        .map(|n| n.parse().expect("KV_CAS_COUNTER_INCREMENTS is a number"))
        .unwrap_or(INCREMENTS);
    let started = Instant::now();
    let config = counter::Config {
        key: "counter".into(),
        clients: CLIENTS,
        increments,
        request_timeout: Duration::from_secs(10),
        within: Duration::from_secs(120),
    };
    let run = match counter::run(&cluster.apis, &config).await {
        Ok(run) => run,
        Err(e) => {
            for node in &cluster.nodes {
                eprintln!("--- {} ---\n{}", node.name, node.tail());
            }
            panic!("the counter workload failed: {e:#}");
        }
    };
    let workload_took = started.elapsed();

    let history = &run.history;
    let end_us = history.iter().map(|op| op.return_us).max().unwrap_or(0);
    let checking = Instant::now();
    let report = Report::new("cas-counter", history, end_us, Vec::new());
    let check_took = checking.elapsed();
    let dir = report.write(history).expect("write the report").to_owned();
    println!("{}", report.render());
    let count = |kind: Kind, applied: Option<bool>| {
        history
            .iter()
            .filter(|op| op.kind == kind && op.outcome == Outcome::Ok && op.applied == applied)
            .count()
    };
    println!(
        "workload {workload_took:?}, check {check_took:?}: {} reads, {} applied and {} \
         refused compare-and-sets, {} unknown; report: {}",
        count(Kind::Get, None),
        count(Kind::Cas, Some(true)),
        count(Kind::Cas, Some(false)),
        run.unknown_cas,
        dir.display()
    );

    if let Some(why) = &run.unfinished {
        panic!(
            "the counter workload did not finish: {why}; see {}",
            dir.display()
        );
    }
    let total = u64::from(CLIENTS * increments);
    let final_value: u64 = run
        .final_value
        .as_deref()
        .expect("the counter exists at the end")
        .parse()
        .expect("the counter holds a number");
    // Each client stops after its 200th acknowledged increment; one whose outcome was
    // unknown may also have applied, and would add one the client did not count.
    if run.unknown_cas == 0 {
        assert_eq!(final_value, total, "the final value; see {}", dir.display());
    } else {
        assert!(
            (total..=total + run.unknown_cas as u64).contains(&final_value),
            "the final value is {final_value}, with {} compare-and-sets of unknown outcome; \
             see {}",
            run.unknown_cas,
            dir.display()
        );
    }
    assert_eq!(count(Kind::Cas, Some(true)) as u64, total);
    if let Err(e) = revisions_agree(history) {
        panic!("{e}");
    }
    assert!(
        report.linearizable(),
        "the history is not linearizable: {}; see {}",
        report
            .violations
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        dir.display()
    );
}
