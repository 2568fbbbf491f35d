//! Power cuts: real `kvstore` processes (embedded redb store) whose data dirs live on a
//! file system that forgets everything not fsynced when the power goes
//! (`testfs::PowerLossFs`). A cut is SIGKILL of every process on that disk, then the
//! disk drops its unsynced writes, creates, renames and removals.
//!
//! - one node under write load, cut at random moments, many times (every other cut
//!   torn: some unsynced pages written back): every write that was acknowledged is
//!   there after each restart, and every restart succeeds;
//! - torn cuts with `storage.sync_writes: false` (much unsynced): every start succeeds;
//! - three nodes, each in turn loses power, then all three at once: the recorded
//!   history is linearizable (final reads of every key from every node included);
//! - both with `storage.sync_writes: false` must fail: the harness sees a missing
//!   fsync.
//!
//! `KV_POWERLOSS_CUTS` (cuts of the single node) and `KV_POWERLOSS_ROUNDS` (rounds of
//! the cluster) make the runs longer; `make soak` sets them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::report::{report_dir, Report};
use integration_tests::workload::{self, Endpoints, Workload};
use testfs::PowerLossFs;

use crate::support::harness::Cluster;
use crate::support::{unique_writers, wait_ready, NodeProcess};

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A power-loss disk mounted in a temporary directory, with an empty data dir on it
/// whose entry is durable (making `storage.data_dir` itself is the operator's part).
struct Disk {
    fs: PowerLossFs,
    _mountpoint: tempfile::TempDir,
}

impl Disk {
    fn mount() -> Disk {
        let mountpoint = tempfile::tempdir().expect("temp dir");
        let fs = PowerLossFs::mount(mountpoint.path()).expect("mount the power-loss disk");
        std::fs::create_dir(fs.path().join("data")).expect("make the data dir");
        std::fs::File::open(fs.path())
            .and_then(|root| root.sync_all())
            .expect("sync the disk's root");
        Disk {
            fs,
            _mountpoint: mountpoint,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.fs.path().join("data")
    }

    fn cut(&mut self) {
        self.fs.cut().expect("power cut");
    }

    /// A cut during write-back: some unsynced pages made it to the disk.
    fn torn_cut(&mut self, seed: u64) {
        self.fs.torn_cut(seed).expect("power cut");
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client")
}

/// Keys written with their values, in the order they were acknowledged.
type Acked = Arc<Mutex<Vec<String>>>;

/// The acknowledged keys that `node` does not return with their value.
async fn missing(client: &reqwest::Client, node: &NodeProcess, keys: &[String]) -> Vec<String> {
    use futures::StreamExt;
    futures::stream::iter(keys)
        .map(|key| async move {
            let resp = client
                .get(node.url(&format!("/kv/{key}")))
                .send()
                .await
                .expect("read back");
            let value = match resp.status().as_u16() {
                200 => resp.json::<serde_json::Value>().await.ok(),
                404 => None,
                status => panic!("reading {key} back answered {status}"),
            };
            let expected = format!("value of {key}");
            (value.as_ref().and_then(|v| v["value"].as_str()) != Some(&expected))
                .then(|| key.clone())
        })
        .buffer_unordered(8)
        .filter_map(|m| async move { m })
        .collect()
        .await
}

/// What a series of power cuts of one node did.
#[derive(Debug)]
struct CutRun {
    cuts: usize,
    acked: usize,
    /// Acknowledged writes missing after the restart that followed the first cut
    /// that lost any (empty: none lost).
    lost: Vec<String>,
    counters: testfs::Counters,
}

/// Puts unique keys to `node` until at least 20 more are acknowledged, then for 0.2 to
/// 1.5 s more (so the cut lands anywhere in the log's group commits, snapshots and
/// state-machine flushes), then SIGKILLs it.
async fn write_until_killed(
    client: &reqwest::Client,
    mut node: NodeProcess,
    round: usize,
    acked: &Acked,
    rng: &mut fastrand::Rng,
) {
    let before = acked.lock().unwrap().len();
    let writers = unique_writers(client, &node, &format!("r{round}-"), acked);
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < before + 20 {
        assert!(Instant::now() < deadline, "no writes acknowledged in 20 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(rng.u64(200..1500))).await;
    node.child.kill().expect("SIGKILL");
    node.wait_exit(Duration::from_secs(10));
    drop(node);
    for w in writers {
        w.await.expect("writer");
    }
}

/// Runs one node on a power-loss disk: restart, check every write acknowledged so far,
/// write under load (see [`write_until_killed`]), cut. Every other cut is torn (some unsynced pages written back, in no order). Stops at the first cut that
/// loses an acknowledged write.
async fn cut_a_node_repeatedly(cuts: usize, env: &[(&str, &str)]) -> CutRun {
    let mut disk = Disk::mount();
    let data = disk.data_dir();
    let client = http_client();
    let acked: Acked = Arc::default();
    let mut rng = fastrand::Rng::with_seed(u64::from(std::process::id()));
    let mut lost = Vec::new();
    let mut done = 0;
    for round in 0..cuts {
        // A start-up that fails is a test failure: nothing here corrupts the disk.
        let node = NodeProcess::start(&data, env);
        wait_ready(&node, &client).await;
        let so_far = acked.lock().unwrap().clone();
        lost = missing(&client, &node, &so_far).await;
        if !lost.is_empty() {
            break;
        }
        write_until_killed(&client, node, round, &acked, &mut rng).await;
        if round % 2 == 1 {
            disk.torn_cut(rng.u64(..));
        } else {
            disk.cut();
        }
        done += 1;
    }
    if lost.is_empty() {
        let node = NodeProcess::start(&data, env);
        wait_ready(&node, &client).await;
        let all = acked.lock().unwrap().clone();
        lost = missing(&client, &node, &all).await;
    }
    let acked = acked.lock().unwrap().len();
    CutRun {
        cuts: done,
        acked,
        lost,
        counters: disk.fs.counters(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_lose_no_acknowledged_write() {
    if !PowerLossFs::available_or_skip() {
        return;
    }
    let run = cut_a_node_repeatedly(env_count("KV_POWERLOSS_CUTS", 8), &[]).await;
    println!(
        "power cuts: {} cuts, {} acknowledged writes, {} lost; the disk: {:?}",
        run.cuts,
        run.acked,
        run.lost.len(),
        run.counters
    );
    assert!(
        run.lost.is_empty(),
        "{} acknowledged writes lost after cut {}, e.g. {:?}",
        run.lost.len(),
        run.cuts,
        &run.lost[..run.lost.len().min(5)]
    );
    assert!(
        run.counters.pages_lost > 0,
        "no cut dropped anything: the cuts did not land under load ({:?})",
        run.counters
    );
}

/// The harness sees a missing fsync: without `storage.sync_writes` a write is
/// acknowledged before it is on disk, and a cut under load loses some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sync_writes_a_power_cut_loses_acknowledged_writes() {
    if !PowerLossFs::available_or_skip() {
        return;
    }
    let run = cut_a_node_repeatedly(5, &[("KV_STORAGE_SYNC_WRITES", "false")]).await;
    println!(
        "sync_writes=false: {} cuts, {} acknowledged writes, {} lost",
        run.cuts,
        run.acked,
        run.lost.len()
    );
    assert!(
        !run.lost.is_empty(),
        "{} cuts under load with sync_writes=false lost nothing: the disk does not \
         drop unsynced writes",
        run.cuts
    );
}

/// Torn cuts with much unsynced (`storage.sync_writes: false`): log segments and redb
/// files come back with random unsynced pages written and others not. Recent writes
/// may be lost in this mode. A log whose unsynced pages came back out of order (a
/// record lost, a later one present) cannot be told from corruption: the node then
/// refuses to start with the documented message naming the file and offset, and is
/// rebuilt (here: an empty data dir). Any other outcome (a panic, another error, a
/// node that starts but does not serve) fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_cuts_without_sync_writes_start_or_refuse_cleanly() {
    if !PowerLossFs::available_or_skip() {
        return;
    }
    let env = [("KV_STORAGE_SYNC_WRITES", "false")];
    let mut disk = Disk::mount();
    let data = disk.data_dir();
    let client = http_client();
    let acked: Acked = Arc::default();
    let mut rng = fastrand::Rng::with_seed(u64::from(std::process::id()));
    let (mut started, mut refused) = (0, 0);
    for round in 0..env_count("KV_POWERLOSS_CUTS", 6) {
        let node = match NodeProcess::try_start(&data, &env) {
            Ok(node) => node,
            Err((status, stderr)) => {
                assert!(
                    stderr.contains("corruption inside written data")
                        && stderr.contains("rebuild this node from its peers"),
                    "round {round}: kvstore exited with {status} for another reason: {stderr}"
                );
                refused += 1;
                std::fs::remove_dir_all(&data).expect("clear the refused data dir");
                std::fs::create_dir_all(&data).expect("make an empty data dir");
                acked.lock().unwrap().clear();
                NodeProcess::start(&data, &env)
            }
        };
        started += 1;
        wait_ready(&node, &client).await;
        write_until_killed(&client, node, round, &acked, &mut rng).await;
        disk.torn_cut(rng.u64(..));
    }
    let node = NodeProcess::try_start(&data, &env).unwrap_or_else(|(status, stderr)| {
        assert!(
            stderr.contains("corruption inside written data"),
            "{status}: {stderr}"
        );
        refused += 1;
        std::fs::remove_dir_all(&data).expect("clear the refused data dir");
        std::fs::create_dir_all(&data).expect("make an empty data dir");
        NodeProcess::start(&data, &env)
    });
    wait_ready(&node, &client).await;
    crate::support::put_ok(&client, &node.url("/kv/after-the-cuts"), "served").await;
    let counters = disk.fs.counters();
    println!("torn cuts: {started} starts, {refused} refused as corrupt, {counters:?}");
    assert!(
        counters.pages_written_back > 0,
        "no cut tore anything ({counters:?})"
    );
}

/// A three-node cluster on three power-loss disks under the recording workload: each
/// node in turn loses power and comes back, then all three at once. `rounds` repeats
/// that. Returns the checked history's report and what else went wrong (no leader
/// after a restart).
async fn cluster_power_cuts(
    name: &str,
    rounds: usize,
    env: &[(&str, &str)],
) -> (Report, Vec<String>) {
    let mut disks: BTreeMap<u64, Disk> = (1..=3).map(|id| (id, Disk::mount())).collect();
    // The nodes' logs, across restarts, go beside the report (see `keep_log`).
    let logs = report_dir(name);
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).expect("make the report dir");
    let node_env = disks
        .iter()
        .map(|(id, disk)| {
            let dir = disk.data_dir().to_string_lossy().into_owned();
            (*id, vec![("KV_STORAGE_DATA_DIR".to_string(), dir)])
        })
        .collect();
    let mut cluster = Cluster::start_with_node_env(3, env, node_env);
    cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(10))
        .await;
    let endpoints = Endpoints::new((1..=3).map(|id| cluster.url(id, "")).collect());
    let workload = Workload::start(endpoints, workload::Config::default());
    let mut timeline = Vec::new();
    let mut note = |workload: &Workload, what: String| {
        let at = workload.elapsed().as_micros() as u64;
        eprintln!("[{name}] {:>7.3} s  {what}", at as f64 / 1e6);
        timeline.push((at, what));
    };
    let mut problems = Vec::new();
    let mut rng = fastrand::Rng::with_seed(u64::from(std::process::id()));
    let settle = |rng: &mut fastrand::Rng| Duration::from_millis(rng.u64(500..1500));
    for round in 0..rounds {
        for id in 1..=3u64 {
            tokio::time::sleep(settle(&mut rng)).await;
            let role = cluster
                .status(id)
                .await
                .and_then(|s| s["role"].as_str().map(String::from))
                .unwrap_or_else(|| "unknown".into());
            note(
                &workload,
                format!("round {round}: node {id} ({role}) loses power"),
            );
            keep_log(&cluster, id, &logs);
            cluster.kill(id);
            disks.get_mut(&id).expect("disk").cut();
            cluster.restart(id);
            note(&workload, format!("node {id} serving again"));
        }
        tokio::time::sleep(settle(&mut rng)).await;
        note(&workload, format!("round {round}: all three lose power"));
        for id in 1..=3u64 {
            keep_log(&cluster, id, &logs);
            cluster.kill(id);
        }
        for disk in disks.values_mut() {
            disk.cut();
        }
        for id in 1..=3u64 {
            cluster.restart(id);
        }
        if !leader_elected(&cluster, Duration::from_secs(20)).await {
            let problem = "no leader within 20 s after all three came back".to_string();
            note(&workload, problem.clone());
            problems.push(problem);
            break;
        }
        note(
            &workload,
            "all three serving again; a leader elected".into(),
        );
    }
    tokio::time::sleep(settle(&mut rng)).await;
    note(
        &workload,
        "workload stopping; final reads of every key from every node".into(),
    );
    let history = workload.finish().await;
    for id in 1..=3 {
        keep_log(&cluster, id, &logs);
    }
    let end_us = history.iter().map(|op| op.return_us).max().unwrap_or(0);
    let report = Report::new(name, &history, end_us, timeline);
    let dir = report.write(&history).expect("write the report");
    println!("{}", report.render());
    println!("report: {}", dir.display());
    let counters: Vec<_> = disks.values().map(|d| d.fs.counters()).collect();
    println!("the disks: {counters:?}");
    (report, problems)
}

/// Appends what node `id`'s process has logged to `node{id}.log` in `dir`.
fn keep_log(cluster: &Cluster, id: u64, dir: &std::path::Path) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("node{id}.log")))
        .expect("open the node's log file");
    for line in cluster.node(id).log_lines() {
        writeln!(file, "{line}").expect("write the node's log");
    }
}

/// Whether all three nodes agree on a leader within `within`.
async fn leader_elected(cluster: &Cluster, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let mut leaders = Vec::new();
        for id in 1..=3 {
            leaders.push(
                cluster
                    .status(id)
                    .await
                    .and_then(|s| s["leader_id"].as_u64()),
            );
        }
        if leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0]) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_whose_nodes_lose_power_stays_linearizable() {
    if !PowerLossFs::available_or_skip() {
        return;
    }
    let rounds = env_count("KV_POWERLOSS_ROUNDS", 1);
    let (report, problems) = cluster_power_cuts("powerloss-cluster", rounds, &[]).await;
    assert!(problems.is_empty(), "{problems:?}");
    assert!(
        report.linearizable(),
        "not linearizable after power cuts: {}",
        report
            .violations
            .iter()
            .take(3)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let ok = |kind: &str| report.by_kind.get(kind).map_or(0, |c| c.ok);
    println!(
        "cluster power cuts: {rounds} rounds, {} node cuts, {} acknowledged writes, \
         linearizable (nothing acknowledged lost)",
        rounds * 6,
        ok("put") + ok("delete")
    );
    assert!(ok("put") >= 50, "only {} puts succeeded", ok("put"));
}

/// The cluster run sees a missing fsync too: writes acknowledged before they were on
/// any disk are gone when all three lose power (the reads after the restart contradict
/// them), or a node that lost its vote but kept newer log entries stops Raft and no
/// leader is elected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sync_writes_a_cluster_power_cut_loses_acknowledged_writes() {
    if !PowerLossFs::available_or_skip() {
        return;
    }
    // Two rounds: in one, the unsynced pages a cut drops can by chance hold nothing a
    // later read contradicts (seen once in CI: 18 pages lost, history linearizable).
    let (report, problems) = cluster_power_cuts(
        "powerloss-cluster-no-sync",
        2,
        &[("KV_STORAGE_SYNC_WRITES", "false")],
    )
    .await;
    assert!(
        !report.linearizable() || !problems.is_empty(),
        "nodes lost power with sync_writes=false and the cluster still serves a \
         linearizable history: the disks do not drop unsynced writes"
    );
}
