//! A real PostgreSQL for tests, started with testcontainers.
//!
//! The image comes from `KV_TEST_POSTGRES_IMAGE` (`make test` sets it: the official
//! `postgres:15` where a registry is reachable, else `kvstore-postgres:15` built from
//! Debian's packages by `images/build.sh`). Without a Docker daemon the tests that need
//! it say so and return, unless `KV_REQUIRE_DOCKER` is set (CI sets it): then a missing
//! daemon is a failure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvstore::config::{Settings, StorageType};
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

pub const USER: &str = "postgres";
pub const PASSWORD: &str = "kv-test-secret-pw";

/// Whether Docker can run containers here; see the module docs for what happens if not.
pub fn docker_available() -> bool {
    let ok = std::process::Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("KV_REQUIRE_DOCKER").is_none(),
            "KV_REQUIRE_DOCKER is set but no Docker daemon answers `docker info`"
        );
        eprintln!(
            "SKIPPED: no Docker daemon; the PostgreSQL tests need one \
             (KV_REQUIRE_DOCKER=1 makes this a failure)"
        );
    }
    ok
}

fn image() -> GenericImage {
    let image =
        std::env::var("KV_TEST_POSTGRES_IMAGE").unwrap_or_else(|_| "kvstore-postgres:15".into());
    let (name, tag) = image.rsplit_once(':').unwrap_or((image.as_str(), "latest"));
    GenericImage::new(name, tag)
        .with_exposed_port(5432.tcp())
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
}

/// A running PostgreSQL server; removed when dropped.
pub struct PgServer {
    container: ContainerAsync<GenericImage>,
    pub port: u16,
}

impl PgServer {
    /// Starts a server on a free host port, or returns `None` when Docker is missing.
    pub async fn start() -> Option<PgServer> {
        if !docker_available() {
            return None;
        }
        // A fixed host port, so that a stopped and restarted container keeps it.
        let port = super::free_port("0.0.0.0");
        let container = image()
            .with_env_var("POSTGRES_PASSWORD", PASSWORD)
            .with_mapped_port(port, 5432.tcp())
            .with_startup_timeout(Duration::from_secs(60))
            .start()
            .await
            .expect("start PostgreSQL (run `make test`, which builds or pulls the image)");
        let server = PgServer { container, port };
        server.wait_accepting().await;
        Some(server)
    }

    fn url(&self, database: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Waits until the server accepts TCP connections (the official image restarts
    /// once during initialisation).
    pub async fn wait_accepting(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match sqlx::PgPool::connect(&self.url("postgres")).await {
                Ok(pool) => {
                    pool.close().await;
                    return;
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "PostgreSQL not accepting connections: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Creates a new, empty database and returns its name.
    pub async fn create_database(&self) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let name = format!("kv_test_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let pool = sqlx::PgPool::connect(&self.url("postgres"))
            .await
            .expect("connect");
        // The name is generated above, never user data.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .expect("create database");
        pool.close().await;
        name
    }

    /// Runs one statement in `database` (a fixed statement from a test, never data).
    pub async fn execute(&self, database: &str, statement: &'static str) {
        let pool = sqlx::PgPool::connect(&self.url(database))
            .await
            .expect("connect");
        sqlx::query(statement)
            .execute(&pool)
            .await
            .expect("statement");
        pool.close().await;
    }

    /// Points `settings` at `database` on this server.
    pub fn configure(&self, settings: &mut Settings, database: &str) {
        settings.storage.kind = StorageType::Database;
        settings.database.host = "127.0.0.1".into();
        settings.database.port = self.port;
        settings.database.database = database.into();
        settings.database.username = USER.into();
        settings.database.password = PASSWORD.into();
        settings.database.ssl_mode = "disable".into();
        settings.database.min_conns = 0;
        settings.database.max_conns = 4;
    }

    /// The same, as `KV_*` variables for a `kvstore` process.
    pub fn env(&self, database: &str) -> Vec<(String, String)> {
        [
            ("KV_STORAGE_TYPE", "database".to_string()),
            ("KV_DB_HOST", "127.0.0.1".into()),
            ("KV_DB_PORT", self.port.to_string()),
            ("KV_DB_NAME", database.into()),
            ("KV_DB_USER", USER.into()),
            ("KV_DB_PASSWORD", PASSWORD.into()),
            ("KV_DB_SSL_MODE", "disable".into()),
            ("KV_DB_MIN_CONNS", "0".into()),
            ("KV_DB_MAX_CONNS", "4".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Runs one statement built by a test (from its own constants, never data).
    pub async fn execute_owned(&self, database: &str, statement: String) {
        let pool = sqlx::PgPool::connect(&self.url(database))
            .await
            .expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&pool)
            .await
            .expect("statement");
        pool.close().await;
    }

    /// PostgreSQL's plan for `query` in `database`, with sequential scans priced out:
    /// a plan that still scans the table says no index can serve the query.
    pub async fn plan_without_seqscan(&self, database: &str, query: &'static str) -> String {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.url(database))
            .await
            .expect("connect");
        let mut conn = pool.acquire().await.expect("connection");
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut *conn)
            .await
            .expect("set enable_seqscan");
        let lines =
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("EXPLAIN {query}")))
                .fetch_all(&mut *conn)
                .await
                .expect("explain");
        drop(conn);
        pool.close().await;
        lines.join("\n")
    }

    /// The keys in `database`'s `kv` table, sorted.
    pub async fn keys(&self, database: &str) -> Vec<String> {
        let pool = sqlx::PgPool::connect(&self.url(database))
            .await
            .expect("connect");
        let keys = sqlx::query_scalar::<_, String>("SELECT key FROM kv ORDER BY key")
            .fetch_all(&pool)
            .await
            .expect("read keys");
        pool.close().await;
        keys
    }

    /// Kills PostgreSQL with SIGKILL, as the OOM killer or a crash would: what it had
    /// not written out of its WAL buffers is gone. `start_again` brings it back.
    pub async fn kill(&self) {
        let status = std::process::Command::new("docker")
            .args(["kill", "-s", "KILL", self.container.id()])
            .status()
            .expect("run docker kill");
        assert!(status.success(), "docker kill failed");
    }

    /// Stops the container (the data stays); `start_again` brings it back on the same
    /// port.
    pub async fn stop(&self) {
        self.container.stop().await.expect("stop PostgreSQL");
    }

    pub async fn start_again(&self) {
        self.container.start().await.expect("start PostgreSQL");
        self.wait_accepting().await;
    }
}
