//! A cluster of real `kvstore` processes on loopback, each with its own data dir and
//! ports, and the operations the tests need: find the leader, kill, stall (SIGSTOP),
//! restart, add a node.

#![allow(dead_code)] // shared by the cluster and PostgreSQL test binaries

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::support::{eventually, free_port, get_json, NodeProcess};

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
        let ips = (1..=n)
            .map(|id| (id, format!("127.0.0.{}", u64::from(first_octet) + id)))
            .collect();
        Self::start_on(ips, extra_env, BTreeMap::new())
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
