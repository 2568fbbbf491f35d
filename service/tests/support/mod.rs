//! Running the real `kvstore` binary in tests: start it with environment settings,
//! collect its JSON log lines, signal it, wait for it, and poll HTTP with deadlines.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_kvstore");

/// A command for the binary with a clean environment: loopback listeners on free
/// ports, JSON logs, fast Raft timers, `data_dir` as storage. `env` adds to or
/// overrides that.
pub fn command(data_dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("KV_SERVER_HOST", "127.0.0.1")
        .env("KV_SERVER_PORT", "0")
        .env("KV_CLUSTER_RAFT_HOST", "127.0.0.1")
        .env("KV_CLUSTER_RAFT_PORT", "0")
        .env("KV_STORAGE_DATA_DIR", data_dir)
        .env("KV_LOG_FORMAT", "json")
        .env("KV_LOG_LEVEL", "info")
        .env("KV_RAFT_HEARTBEAT_TIMEOUT", "50ms")
        .env("KV_RAFT_ELECTION_TIMEOUT", "150ms");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// A running `kvstore` process and everything it has logged so far.
pub struct NodeProcess {
    pub child: Child,
    /// `host:port` of the client API.
    pub addr: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl NodeProcess {
    /// Starts the binary and waits (up to 20 s) for the log line carrying its address.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> NodeProcess {
        let mut child = command(data_dir, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kvstore");
        let stdout = child.stdout.take().expect("stdout");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "serving the client API" {
                        let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_string());
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("kvstore did not start serving within 20 s");
        NodeProcess { child, addr, logs }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `STOP`, `CONT`, ...).
    pub fn signal(&self, name: &str) {
        signal(self.pid(), name);
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every JSON log line so far.
    pub fn log_lines(&self) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn logged(&self, message: &str) -> bool {
        self.log_lines().iter().any(|l| l["message"] == message)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // A stopped process must be continued before it can die of SIGKILL cleanly.
        signal(self.pid(), "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .expect("run kill");
    let _ = status;
}

/// Polls `check` every 20 ms until it returns `Some`, failing after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GETs `url` and returns the status and JSON body, or `None` if there is no answer.
pub async fn get_json(client: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let resp = client.get(url).send().await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.json().await.ok()?;
    Some((status, body))
}

/// PUTs `{"value": value}` to `url`.
pub async fn put_json(client: &reqwest::Client, url: &str, value: &str) -> Option<(u16, Value)> {
    let resp = client
        .put(url)
        .json(&serde_json::json!({ "value": value }))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.json().await.ok()?;
    Some((status, body))
}
