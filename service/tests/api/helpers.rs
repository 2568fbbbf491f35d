//! `spawn_app`: a real node on 127.0.0.1:0 with its own temp data dir, and request
//! helpers. Logs are shown only when `TEST_LOG` is set.

use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use kvstore::config::Settings;
use kvstore::startup::Application;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::postgres::PgServer;

static LOGGING: Once = Once::new();

fn init_logging() {
    LOGGING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "info".into()))
                .with_test_writer()
                .try_init();
        }
    });
}

/// Which storage backend a test node runs on. Every API test runs on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Redb,
    Postgres,
}

/// What a test node keeps between restarts: its data dir and, for PostgreSQL, the
/// server and database.
struct Backing {
    data_dir: tempfile::TempDir,
    postgres: Option<(PgServer, String)>,
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    backing: Arc<Backing>,
    customize: Arc<dyn Fn(&mut Settings) + Send + Sync>,
}

/// Settings for a test node: loopback, port 0, fast Raft timers, no env overrides.
pub fn test_settings(data_dir: &std::path::Path) -> Settings {
    let mut s = Settings::load_from(None, |_| None).expect("default settings");
    s.server.host = "127.0.0.1".into();
    s.server.port = 0;
    s.cluster.raft_host = "127.0.0.1".into();
    s.cluster.raft_port = 0;
    s.storage.data_dir = data_dir.to_owned();
    s.raft.heartbeat_timeout = Duration::from_millis(50);
    s.raft.election_timeout = Duration::from_millis(150);
    s
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Starts a node on `backend` with settings adjusted by `customize` (kept for
/// restarts).
pub async fn spawn_app_with(
    backend: Backend,
    customize: impl Fn(&mut Settings) + Send + Sync + 'static,
) -> TestApp {
    init_logging();
    let postgres = match backend {
        Backend::Redb => None,
        Backend::Postgres => {
            let server = PgServer::start()
                .await
                .expect("the PostgreSQL tests are skipped before this without Docker");
            let database = server.create_database().await;
            Some((server, database))
        }
    };
    let backing = Arc::new(Backing {
        data_dir: tempfile::tempdir().expect("temp dir"),
        postgres,
    });
    start(backing, Arc::new(customize)).await
}

async fn start(
    backing: Arc<Backing>,
    customize: Arc<dyn Fn(&mut Settings) + Send + Sync>,
) -> TestApp {
    let mut settings = test_settings(backing.data_dir.path());
    if let Some((server, database)) = &backing.postgres {
        server.configure(&mut settings, database);
    }
    customize(&mut settings);
    let app = Application::build(&settings).await.expect("build app");
    let address = format!("http://{}", app.local_addr());
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    let test_app = TestApp {
        address,
        client: reqwest::Client::new(),
        shutdown: Some(tx),
        server: Some(server),
        backing,
        customize,
    };
    test_app.wait_ready().await;
    test_app
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Polls `/ready` until it answers 200, failing after 10 s.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = self.client.get(self.url("/ready")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node did not become ready in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn put(&self, key_path: &str, value: &str) -> reqwest::Response {
        self.client
            .put(self.url(&format!("/kv/{key_path}")))
            .json(&serde_json::json!({ "value": value }))
            .send()
            .await
            .expect("PUT")
    }

    pub async fn get(&self, key_path: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/kv/{key_path}")))
            .send()
            .await
            .expect("GET")
    }

    pub async fn delete(&self, key_path: &str) -> reqwest::Response {
        self.client
            .delete(self.url(&format!("/kv/{key_path}")))
            .send()
            .await
            .expect("DELETE")
    }

    /// Sends a PUT with a raw body and content type.
    pub async fn put_raw(
        &self,
        key_path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .put(self.url(&format!("/kv/{key_path}")))
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send().await.expect("PUT")
    }

    /// The node's data dir (snapshot files live here on both backends).
    pub fn data_dir(&self) -> &std::path::Path {
        self.backing.data_dir.path()
    }

    /// Stops the node cleanly and starts it again on the same storage.
    pub async fn restart(mut self) -> TestApp {
        self.shutdown_now().await;
        start(self.backing.clone(), self.customize.clone()).await
    }

    /// Stops the server the way SIGTERM does and waits for a clean exit.
    pub async fn stop(mut self) {
        self.shutdown_now().await;
    }

    async fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("shutdown within 10 s")
                .expect("server task")
                .expect("clean shutdown");
        }
    }
}

/// Reads a response as JSON, asserting the status and a JSON content type.
pub async fn json(resp: reqwest::Response, status: u16) -> Value {
    let actual = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.expect("body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    if status >= 400 {
        // Every error the API tests provoke passes here: none may show Rust internals.
        assert!(
            !kvstore::api::error::reveals_internals(&text),
            "an error body shows Rust internals: {text}"
        );
    }
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type:?}, body {text}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts a JSON error with `code` and `status`, and returns its body.
pub async fn error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    let body = json(resp, status).await;
    assert_eq!(body["code"], code, "body: {body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "body: {body}"
    );
    body
}
