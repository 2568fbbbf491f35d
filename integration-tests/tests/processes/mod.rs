//! kvstore nodes as processes of this workspace's build (`target/debug/kvstore`), for
//! the tests that need real processes on this machine but no containers.
//!
//! The binary is the one `cargo test --workspace` builds next to this test
//! (`KV_TEST_KVSTORE_BIN` names another); `cargo test -p integration-tests` alone does
//! not build it, so run `cargo build -p kvstore` first.

#![allow(dead_code)] // each test binary uses its own part of the helpers

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The kvstore binary the tests run.
pub fn kvstore_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("KV_TEST_KVSTORE_BIN") {
        return PathBuf::from(path);
    }
    // target/debug/deps/<this test> -> target/debug/kvstore
    let exe = std::env::current_exe().expect("the test's own path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("kvstore"))
        .expect("the test runs from target/<profile>/deps");
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo build -p kvstore` first (or set KV_TEST_KVSTORE_BIN)",
        bin.display()
    );
    bin
}

/// A free port on the loopback address, for a node that names its port to its peers
/// before it starts.
pub fn free_port() -> u16 {
    integration_tests::free_port("127.0.0.1")
}

/// Polls `f` until it gives a value, failing the test with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A command for `program` without the `KV_*` and `OTEL_*` variables of the test's own
/// environment, so that only what the test sets reaches the node.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("KV_") || name.starts_with("OTEL_") {
            command.env_remove(name.as_ref());
        }
    }
    command
}

/// A running process in a process group of its own, killed with its children (SIGKILL)
/// and reaped when dropped: a shell entrypoint's kvstore goes with it. Its output goes
/// to `<dir>/<name>.out`.
pub struct Process {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, mut command: Command, dir: &std::path::Path) -> Process {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
        let log = dir.join(format!("{name}.out"));
        let out = std::fs::File::create(&log).expect("the process's log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Process {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited, with its status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL to the whole group, and wait for the process.
    pub fn kill(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM to the process alone (as a container's PID 1 gets it), then wait up to
    /// `within` for it to exit; its exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The last lines of its output, for a failure message.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// GET `url` as JSON, with `token` as bearer when given; `None` on any failure.
pub async fn get_json(client: &reqwest::Client, url: &str, token: Option<&str>) -> Option<Value> {
    let mut req = client.get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

/// The leader a node's `/status` names, if it names one.
pub async fn leader_of(client: &reqwest::Client, api: &str, token: Option<&str>) -> Option<u64> {
    get_json(client, &format!("{api}/status"), token)
        .await?
        .get("leader_id")?
        .as_u64()
        .filter(|id| *id != 0)
}
