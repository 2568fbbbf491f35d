//! A cluster of real `kvstore` processes on loopback, each with its own data dir and
//! ports, and the operations the tests need: find the leader, kill, stall (SIGSTOP),
//! restart, add a node.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{eventually, free_port, get_json, get_text, put_ok, NodeProcess};

pub struct Cluster {
    pub client: reqwest::Client,
    dir: tempfile::TempDir,
    /// Node id -> (api port, raft port).
    ports: BTreeMap<u64, (u16, u16)>,
    /// Node id -> the loopback address both of its listeners bind.
    ips: BTreeMap<u64, String>,
    procs: BTreeMap<u64, NodeProcess>,
    /// Settings every node of this cluster gets.
    env: Vec<(String, String)>,
    /// Settings for one node only (its own database, say).
    node_env: BTreeMap<u64, Vec<(String, String)>>,
    initial: String,
}

impl Cluster {
    /// Starts `n` voters (ids 1..=n) on 127.0.0.1 that form a cluster by themselves.
    pub fn start(n: u64, extra_env: &[(&str, &str)]) -> Cluster {
        let ips = (1..=n).map(|id| (id, "127.0.0.1".to_string())).collect();
        Self::start_on(ips, extra_env, BTreeMap::new())
    }

    /// Like [`Cluster::start`], with extra settings for each node.
    pub fn start_with_node_env(
        n: u64,
        extra_env: &[(&str, &str)],
        node_env: BTreeMap<u64, Vec<(String, String)>>,
    ) -> Cluster {
        let ips = (1..=n).map(|id| (id, "127.0.0.1".to_string())).collect();
        Self::start_on(ips, extra_env, node_env)
    }

    /// Like [`Cluster::start`], but node `i` binds (and connects from) its own address
    /// `127.0.0.<first_octet + i>`, so its traffic can be told apart and cut.
    pub fn start_isolatable(n: u64, first_octet: u8, extra_env: &[(&str, &str)]) -> Cluster {
        Self::start_isolatable_with_node_env(n, first_octet, extra_env, BTreeMap::new())
    }

    /// Like [`Cluster::start_isolatable`], with extra settings for each node.
    pub fn start_isolatable_with_node_env(
        n: u64,
        first_octet: u8,
        extra_env: &[(&str, &str)],
        node_env: BTreeMap<u64, Vec<(String, String)>>,
    ) -> Cluster {
        let ips = (1..=n)
            .map(|id| (id, format!("127.0.0.{}", u64::from(first_octet) + id)))
            .collect();
        Self::start_on(ips, extra_env, node_env)
    }

    fn start_on(
        ips: BTreeMap<u64, String>,
        extra_env: &[(&str, &str)],
        node_env: BTreeMap<u64, Vec<(String, String)>>,
    ) -> Cluster {
        let ports: BTreeMap<u64, (u16, u16)> = ips
            .iter()
            .map(|(id, ip)| (*id, (free_port(ip), free_port(ip))))
            .collect();
        let initial = ports
            .iter()
            .map(|(id, (api, raft))| {
                let ip = &ips[id];
                format!("{id}=http://{ip}:{api}|http://{ip}:{raft}")
            })
            .collect::<Vec<_>>()
            .join(",");
        let mut env: Vec<(String, String)> = vec![
            ("KV_RAFT_HEARTBEAT_TIMEOUT".into(), "50ms".into()),
            ("KV_RAFT_ELECTION_TIMEOUT".into(), "500ms".into()),
            ("KV_SERVER_REQUEST_TIMEOUT".into(), "3s".into()),
            // On loopback, and the tests call the Raft and /cluster routes directly;
            // a test of the secret sets KV_CLUSTER_SECRET, which then applies.
            ("KV_CLUSTER_INSECURE".into(), "true".into()),
        ];
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let mut cluster = Cluster {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            dir: tempfile::tempdir().expect("temp dir"),
            ports,
            ips,
            node_env,
            procs: BTreeMap::new(),
            env,
            initial,
        };
        let ids: Vec<u64> = cluster.ips.keys().copied().collect();
        for id in ids {
            cluster.spawn(id, true);
        }
        cluster
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    /// The settings node `id` starts with.
    fn node_settings(&self, id: u64, bootstrap: bool) -> Vec<(String, String)> {
        let (api, raft) = self.ports[&id];
        let ip = self.ips[&id].clone();
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .chain(self.node_env.get(&id).into_iter().flatten())
            .cloned()
            .collect();
        env.extend(
            [
                ("KV_RAFT_NODE_ID", id.to_string()),
                ("KV_SERVER_HOST", ip.clone()),
                ("KV_CLUSTER_RAFT_HOST", ip),
                ("KV_SERVER_PORT", api.to_string()),
                ("KV_CLUSTER_RAFT_PORT", raft.to_string()),
                ("KV_CLUSTER_BOOTSTRAP", bootstrap.to_string()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        if bootstrap {
            env.push(("KV_CLUSTER_INITIAL_MEMBERS".into(), self.initial.clone()));
        }
        env
    }

    fn spawn(&mut self, id: u64, bootstrap: bool) {
        let env = self.node_settings(id, bootstrap);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let proc = NodeProcess::start(&self.data_dir(id), &env);
        self.procs.insert(id, proc);
    }

    /// Starts stopped node `id` on its data dir as `restart` would, for a start that
    /// must fail: returns its exit status and its stdout and stderr.
    pub fn restart_to_exit(&self, id: u64) -> (std::process::ExitStatus, String, String) {
        assert!(!self.procs.contains_key(&id), "node {id} is still running");
        let env = self.node_settings(id, true);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        crate::support::run_to_exit(&self.data_dir(id), &env, &[])
    }

    /// Starts a new, empty node that waits to be added (it does not bootstrap).
    pub fn start_joiner(&mut self, id: u64) -> (String, String) {
        let ports = (free_port("127.0.0.1"), free_port("127.0.0.1"));
        self.ports.insert(id, ports);
        self.ips.insert(id, "127.0.0.1".into());
        self.spawn(id, false);
        (
            format!("http://127.0.0.1:{}", ports.0),
            format!("http://127.0.0.1:{}", ports.1),
        )
    }

    pub fn node(&self, id: u64) -> &NodeProcess {
        &self.procs[&id]
    }

    pub fn url(&self, id: u64, path: &str) -> String {
        format!("http://{}:{}{}", self.ips[&id], self.ports[&id].0, path)
    }

    pub fn raft_url(&self, id: u64, path: &str) -> String {
        format!("http://{}:{}{}", self.ips[&id], self.ports[&id].1, path)
    }

    /// Drops all Raft traffic between node `id` and every other node, both ways, with
    /// iptables; clients can still reach its API. Healed when the guard drops.
    pub fn cut_off(&self, id: u64) -> Partition {
        let mut rules = Vec::new();
        for other in self.ips.keys().filter(|o| **o != id) {
            for (from, to) in [(id, *other), (*other, id)] {
                rules.push(vec![
                    "-p".to_string(),
                    "tcp".into(),
                    "-s".into(),
                    self.ips[&from].clone(),
                    "-d".into(),
                    self.ips[&to].clone(),
                    "--dport".into(),
                    self.ports[&to].1.to_string(),
                    "-j".into(),
                    "DROP".into(),
                ]);
            }
        }
        for rule in &rules {
            iptables("-I", rule);
        }
        Partition { rules }
    }

    pub fn kill(&mut self, id: u64) {
        let mut proc = self.procs.remove(&id).expect("running node");
        proc.child.kill().expect("SIGKILL");
        proc.wait_exit(Duration::from_secs(10));
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, id: u64) {
        let mut proc = self.procs.remove(&id).expect("running node");
        proc.signal("TERM");
        let status = proc.wait_exit(Duration::from_secs(20));
        assert!(status.success(), "node {id} exited with {status:?}");
    }

    /// Restarts a node on its data dir; it must not bootstrap again.
    pub fn restart(&mut self, id: u64) {
        assert!(!self.procs.contains_key(&id), "node {id} is still running");
        self.spawn(id, true);
    }

    pub fn pause(&self, id: u64) {
        self.procs[&id].signal("STOP");
    }

    pub fn resume(&self, id: u64) {
        self.procs[&id].signal("CONT");
    }

    /// The value of one sample of node `id`'s `/metrics`, e.g.
    /// `kvstore_raft_pre_vote_rounds_total{outcome="no_election"}`.
    pub async fn metric(&self, id: u64, sample: &str) -> Option<f64> {
        let text = get_text(&self.client, &self.url(id, "/metrics")).await?;
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    }

    pub async fn status(&self, id: u64) -> Option<Value> {
        let (code, body) = get_json(&self.client, &self.url(id, "/status")).await?;
        (code == 200).then_some(body)
    }

    /// Waits until every node in `among` reports the same leader, which is one of
    /// them, and returns it.
    pub async fn wait_leader(&self, among: &[u64], within: Duration) -> u64 {
        eventually(within, "one leader that every node agrees on", || async {
            let mut leader = None;
            for id in among {
                let status = self.status(*id).await?;
                let reported = status["leader_id"].as_u64()?;
                if leader.is_some_and(|l| l != reported) {
                    return None;
                }
                leader = Some(reported);
            }
            leader.filter(|l| among.contains(l))
        })
        .await
    }

    /// Waits until node `id`'s local copy (a stale read) of `key` is `value`.
    pub async fn wait_local_value(&self, id: u64, key: &str, value: &str, within: Duration) {
        let url = self.url(id, &format!("/kv/{key}?consistency=stale"));
        eventually(
            within,
            &format!("node {id} to apply {key}={value}"),
            || async {
                let (code, body) = get_json(&self.client, &url).await?;
                (code == 200 && body["value"] == value).then_some(())
            },
        )
        .await
    }
}

/// Whether this machine can cut traffic with iptables (root and the binary present).
pub fn can_partition() -> bool {
    std::process::Command::new("iptables")
        .args(["-L", "INPUT", "-n"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn iptables(action: &str, rule: &[String]) {
    let status = std::process::Command::new("iptables")
        .arg(action)
        .arg("INPUT")
        .args(rule)
        .status()
        .expect("run iptables");
    assert!(status.success(), "iptables {action} {rule:?} failed");
}

/// iptables rules that isolate a node; removed on drop.
pub struct Partition {
    rules: Vec<Vec<String>>,
}

impl Partition {
    pub fn heal(self) {}
}

impl Drop for Partition {
    fn drop(&mut self) {
        for rule in &self.rules {
            iptables("-D", rule);
        }
    }
}

/// What a follower's return from a partition did to the cluster.
pub struct Return {
    /// (leader, term) before the cut, the same on every node.
    pub before: (u64, u64),
    /// (leader, term) after the follower caught up, as each node reports it.
    pub after: BTreeMap<u64, (Option<u64>, u64)>,
    /// Pre-Vote rounds the cut-off node ran that did not lead to an election.
    pub rounds_without_election: f64,
    /// New leaders the nodes saw from the cut to the end, summed over the nodes.
    pub leader_changes: f64,
}

/// Cuts a follower of a three-node cluster off from its peers until it has either run
/// three election rounds in vain (with Pre-Vote) or raised its term three times (without),
/// checks that meanwhile it serves nothing as if in touch, lets it back, waits until it has
/// caught up with everything written meanwhile, and reports leader and term on every node.
pub async fn cut_off_a_follower_and_let_it_back(cluster: &Cluster) -> Return {
    let all = [1, 2, 3];
    let leader = cluster.wait_leader(&all, Duration::from_secs(10)).await;
    put_ok(&cluster.client, &cluster.url(leader, "/kv/before"), "x").await;
    let term = cluster.status(leader).await.expect("leader status")["term"]
        .as_u64()
        .expect("term");
    for id in all {
        cluster
            .wait_local_value(id, "before", "x", Duration::from_secs(10))
            .await;
        let status = cluster.status(id).await.expect("status");
        assert_eq!(
            (status["leader_id"].as_u64(), status["term"].as_u64()),
            (Some(leader), Some(term)),
            "node {id} before the cut: {status}"
        );
    }
    let cut = all.into_iter().find(|id| *id != leader).unwrap();
    let no_election = r#"kvstore_raft_pre_vote_rounds_total{outcome="no_election"}"#;
    let rounds_before = cluster.metric(cut, no_election).await.unwrap_or(0.0);
    // Count from the moment every node's metrics show the leader (they refresh at least
    // once a second), so that a late first count is not taken for a change.
    eventually(
        Duration::from_secs(5),
        "every node's leader gauge to show the leader",
        || async {
            for id in all {
                if cluster.metric(id, "kvstore_raft_leader_id").await? != leader as f64 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let changes = "kvstore_raft_leader_changes_total";
    let mut changes_before = 0.0;
    for id in all {
        changes_before += cluster.metric(id, changes).await.expect("leader changes");
    }

    let partition = cluster.cut_off(cut);
    let cut_at = Instant::now();
    // Several election timeouts in which the cut-off node tries to become leader.
    eventually(
        Duration::from_secs(30),
        "three failed Pre-Vote rounds or three new terms on the cut-off node",
        || async {
            let rounds = cluster.metric(cut, no_election).await?;
            let status = cluster.status(cut).await?;
            let raised = status["term"].as_u64()? >= term + 3;
            (rounds >= rounds_before + 3.0 || raised).then_some(())
        },
    )
    .await;
    // Cut off, it is not ready and names no leader, whatever its Raft state says.
    let (code, body) = get_json(&cluster.client, &cluster.url(cut, "/ready"))
        .await
        .expect("/ready answers");
    assert_eq!(code, 503, "a cut-off follower must not be ready: {body}");
    let status = cluster.status(cut).await.expect("status");
    assert!(status["leader_id"].is_null(), "{status}");
    let mut written = 0;
    while written < 20 || cut_at.elapsed() < Duration::from_secs(1) {
        put_ok(
            &cluster.client,
            &cluster.url(leader, &format!("/kv/during{written}")),
            "y",
        )
        .await;
        written += 1;
    }
    let rounds_without_election =
        cluster.metric(cut, no_election).await.unwrap_or(0.0) - rounds_before;

    partition.heal();
    let last = format!("during{}", written - 1);
    cluster
        .wait_local_value(cut, &last, "y", Duration::from_secs(20))
        .await;
    // Whatever the return caused has happened by now: wait until every node names the
    // same leader, then read what each one says.
    cluster.wait_leader(&all, Duration::from_secs(20)).await;
    let mut after = BTreeMap::new();
    for id in all {
        let status = cluster.status(id).await.expect("status");
        after.insert(
            id,
            (
                status["leader_id"].as_u64(),
                status["term"].as_u64().unwrap_or(0),
            ),
        );
    }
    // The metrics refresh at least once a second: wait for them to agree with /status.
    eventually(
        Duration::from_secs(5),
        "the leader gauges to match /status",
        || async {
            for (id, (seen, _)) in &after {
                let gauge = cluster.metric(*id, "kvstore_raft_leader_id").await?;
                if Some(gauge as u64) != *seen {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let mut changes_after = 0.0;
    for id in all {
        changes_after += cluster.metric(id, changes).await.expect("leader changes");
    }
    let leader_changes = changes_after - changes_before;
    eprintln!(
        "a follower back from a partition: {leader_changes} leader changes seen by the three \
         nodes, {rounds_without_election} Pre-Vote rounds without an election on it"
    );
    Return {
        before: (leader, term),
        after,
        rounds_without_election,
        leader_changes,
    }
}
