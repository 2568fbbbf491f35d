//! Running the real `kvstore` binary in tests: start it with environment settings,
//! collect its JSON log lines, signal it, wait for it, and poll HTTP with deadlines.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod harness;
pub mod large_values;
pub mod postgres;

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
        Self::try_start(data_dir, env).unwrap_or_else(|(status, stderr)| {
            panic!("kvstore exited with {status} before serving: {stderr}")
        })
    }

    /// Like [`NodeProcess::start`], but a node that exits before serving is an answer,
    /// not a failure: its exit status and what it printed on stderr.
    pub fn try_start(
        data_dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<NodeProcess, (ExitStatus, String)> {
        let mut child = command(data_dir, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kvstore");
        let stderr = child.stderr.take().expect("stderr");
        let errors = Arc::new(Mutex::new(String::new()));
        let error_sink = errors.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let mut text = error_sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
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
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => break addr,
                Err(_) => {
                    if let Some(status) = child.try_wait().expect("try_wait") {
                        // What it printed last arrives with its exit: wait for the pipe
                        // to close (bounded; the process is gone).
                        let closed = Instant::now() + Duration::from_secs(2);
                        while Arc::strong_count(&errors) > 1 && Instant::now() < closed {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        let text = errors.lock().unwrap().clone();
                        return Err((status, text));
                    }
                    if Instant::now() >= deadline {
                        // Not left running past the test, holding its data dir.
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!("kvstore did not start serving within 20 s");
                    }
                }
            }
        };
        Ok(NodeProcess { child, addr, logs })
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
                // Its last log lines are still in the pipe: wait (bounded; the process
                // is gone) until the reader thread has drained it and let go of `logs`.
                let drained = Instant::now() + Duration::from_secs(2);
                while Arc::strong_count(&self.logs) > 1 && Instant::now() < drained {
                    std::thread::sleep(Duration::from_millis(10));
                }
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

    /// Whether any line logged so far contains `text`, anywhere in it.
    pub fn logged_containing(&self, text: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(text))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // A stopped process must be continued before it can die of SIGKILL cleanly. One
        // that has exited and been reaped has no pid left to signal.
        if let Ok(None) = self.child.try_wait() {
            signal(self.pid(), "CONT");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends signal `name` to `pid`; a signal that was not delivered fails the test, so a
/// test never goes on believing it stopped, continued or reloaded a process.
pub fn signal(pid: u32, name: &str) {
    let out = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .output()
        .expect("run kill");
    assert!(
        out.status.success(),
        "kill -{name} {pid} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

pub use integration_tests::free_port;

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

/// GETs `url` and returns its body as text, or `None` if there is no answer.
pub async fn get_text(client: &reqwest::Client, url: &str) -> Option<String> {
    client.get(url).send().await.ok()?.text().await.ok()
}

/// PUTs `{"value": value}` to `url` until it answers 201 (15 s at most) and returns
/// the body. For writes that set up a scenario rather than test availability: a
/// passing leader change may answer one attempt with 503, and repeating a put is
/// harmless.
pub async fn put_ok(client: &reqwest::Client, url: &str, value: &str) -> Value {
    eventually(
        Duration::from_secs(15),
        &format!("PUT {url} to answer 201"),
        || async {
            match put_json(client, url, value).await {
                Some((201, body)) => Some(body),
                _ => None,
            }
        },
    )
    .await
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

/// Runs the binary to completion (up to 20 s), for configurations that must fail.
pub fn run_to_exit(
    data_dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (ExitStatus, String, String) {
    let mut child = command(data_dir, env)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvstore");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kvstore {args:?} {env:?} did not exit within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    (
        status,
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Polls `/ready` until it answers 200, failing after 10 s.
pub async fn wait_ready(node: &NodeProcess, client: &reqwest::Client) {
    eventually(Duration::from_secs(10), "the node to be ready", || async {
        let resp = client.get(node.url("/ready")).send().await.ok()?;
        (resp.status() == 200).then_some(())
    })
    .await
}

/// Starts eight writers that put unique keys (`{prefix}w{writer}-{i}`, value
/// `value of {key}`) to `node` until it dies under them, recording every 201 in
/// `acked`. Any other answer fails the test: nothing else is expected before the kill.
pub fn unique_writers(
    client: &reqwest::Client,
    node: &NodeProcess,
    prefix: &str,
    acked: &Arc<Mutex<Vec<String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..8)
        .map(|w| {
            let (client, acked, url) = (client.clone(), acked.clone(), node.url("/kv/"));
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("{prefix}w{w}-{i}");
                    let resp = client
                        .put(format!("{url}{key}"))
                        .json(&serde_json::json!({ "value": format!("value of {key}") }))
                        .send()
                        .await;
                    match resp {
                        Ok(r) if r.status() == 201 => acked.lock().unwrap().push(key),
                        Ok(r) => panic!("unexpected status {} before the kill", r.status()),
                        Err(_) => return, // the process is gone
                    }
                }
            })
        })
        .collect()
}

/// Starts a node on `data_dir` with `env`, SIGKILLs it while eight writers put unique
/// keys, restarts it, and asserts that every write answered 201 is there and that the
/// restart did not initialise a new cluster.
pub async fn sigkill_during_writes_loses_nothing(data_dir: &Path, env: &[(&str, &str)]) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let node = NodeProcess::start(data_dir, env);
    wait_ready(&node, &client).await;

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let writers = unique_writers(&client, &node, "", &acked);
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 300 {
        assert!(
            Instant::now() < deadline,
            "fewer than 300 writes acknowledged in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut node = node;
    node.child.kill().expect("SIGKILL");
    node.wait_exit(Duration::from_secs(10));
    for w in writers {
        w.await.expect("writer task");
    }
    drop(node);
    let acked = acked.lock().unwrap().clone();

    let node = NodeProcess::start(data_dir, env);
    wait_ready(&node, &client).await;
    let rejoined = node
        .log_lines()
        .iter()
        .any(|l| l["message"] == "raft state found on disk; rejoining the cluster");
    assert!(
        rejoined,
        "the restarted node must not initialise a new cluster"
    );
    let mut missing = Vec::new();
    for key in &acked {
        let resp = client
            .get(node.url(&format!("/kv/{key}")))
            .send()
            .await
            .unwrap();
        if resp.status() != 200 {
            missing.push(key.clone());
            continue;
        }
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["value"], format!("value of {key}"));
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

/// A small tmpfs, as a data dir that fills up. Mounting needs root: `mount` returns
/// `None` without it, and the test skips. Unmounted on drop.
pub struct SmallDisk {
    pub dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallDisk { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "remount to {size}");
    }

    /// Fills every free byte with a file of its own, until the file system answers
    /// `ENOSPC`.
    pub fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.filler()).expect("create the filler");
        for chunk in [1 << 20, 4096, 1] {
            let block = vec![0u8; chunk];
            while file.write_all(&block).is_ok() {}
        }
    }

    /// Removes what [`SmallDisk::fill`] wrote.
    pub fn free(&self) {
        std::fs::remove_file(self.filler()).expect("remove the filler");
    }

    fn filler(&self) -> std::path::PathBuf {
        self.dir.path().join("filler")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Mounts a [`SmallDisk`] of `size`, or says the test is skipped (and fails it when
/// `KV_REQUIRE_ROOT` is set).
pub fn small_disk_or_skip(size: &str) -> Option<SmallDisk> {
    let disk = SmallDisk::mount(size);
    if disk.is_none() {
        assert!(
            std::env::var_os("KV_REQUIRE_ROOT").is_none(),
            "KV_REQUIRE_ROOT is set but a tmpfs cannot be mounted"
        );
        eprintln!("SKIPPED: mounting a small file system needs root");
    }
    disk
}
