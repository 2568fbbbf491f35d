//! A cluster of real `kvstore` processes on loopback, each with its own data dir and
//! ports, and the operations the tests need: find the leader, kill, stall (SIGSTOP),
//! restart, add a node.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::support::{eventually, get_json, NodeProcess};

/// Ports picked by binding port 0 and letting go: the nodes must know each other's
/// addresses before any of them starts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

pub struct Cluster {
    pub client: reqwest::Client,
    dir: tempfile::TempDir,
    /// Node id -> (api port, raft port).
    ports: BTreeMap<u64, (u16, u16)>,
    procs: BTreeMap<u64, NodeProcess>,
    /// Settings every node of this cluster gets.
    env: Vec<(String, String)>,
    initial: String,
}

impl Cluster {
    /// Starts `n` voters (ids 1..=n) that form a cluster by themselves.
    pub fn start(n: u64, extra_env: &[(&str, &str)]) -> Cluster {
        let ports: BTreeMap<u64, (u16, u16)> =
            (1..=n).map(|id| (id, (free_port(), free_port()))).collect();
        let initial = ports
            .iter()
            .map(|(id, (api, raft))| format!("{id}=http://127.0.0.1:{api}|http://127.0.0.1:{raft}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut env: Vec<(String, String)> = vec![
            ("KV_RAFT_HEARTBEAT_TIMEOUT".into(), "50ms".into()),
            ("KV_RAFT_ELECTION_TIMEOUT".into(), "300ms".into()),
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
            procs: BTreeMap::new(),
            env,
            initial,
        };
        for id in 1..=n {
            cluster.spawn(id, true);
        }
        cluster
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    fn spawn(&mut self, id: u64, bootstrap: bool) {
        let (api, raft) = self.ports[&id];
        let (api, raft, id_text) = (api.to_string(), raft.to_string(), id.to_string());
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.extend([
            ("KV_RAFT_NODE_ID", id_text.as_str()),
            ("KV_SERVER_PORT", api.as_str()),
            ("KV_CLUSTER_RAFT_PORT", raft.as_str()),
            (
                "KV_CLUSTER_BOOTSTRAP",
                if bootstrap { "true" } else { "false" },
            ),
        ]);
        if bootstrap {
            env.push(("KV_CLUSTER_INITIAL_MEMBERS", self.initial.as_str()));
        }
        let proc = NodeProcess::start(&self.data_dir(id), &env);
        self.procs.insert(id, proc);
    }

    /// Starts a new, empty node that waits to be added (it does not bootstrap).
    pub fn start_joiner(&mut self, id: u64) -> (String, String) {
        let ports = (free_port(), free_port());
        self.ports.insert(id, ports);
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
        format!("http://127.0.0.1:{}{}", self.ports[&id].0, path)
    }

    pub fn raft_url(&self, id: u64, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.ports[&id].1, path)
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
