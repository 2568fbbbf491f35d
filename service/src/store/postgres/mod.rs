//! The PostgreSQL backend: Raft log, vote, committed index, purge marker, key-value
//! data, last applied id and membership in the tables of `migrations/`, in the node's
//! own database (`database.database`). Snapshot files live under `storage.data_dir`.
//!
//! Every statement is bound, never assembled from data. A log append batch is one
//! statement, durable before Raft hears of it, and carries the committed log id when a
//! new one is waiting. An apply batch with its last applied id is one statement too (a
//! transaction with the membership records when it changes the membership). Applies, and
//! the committed index when it is written on its own, do not wait for their WAL flush
//! (`synchronous_commit` off for that transaction): as with redb, the next durable
//! commit flushes the WAL up to them, and what a crash of the node loses is applied
//! again from the log at start. A crash of PostgreSQL alone can lose applies the running
//! node counts as done: the next apply, or the next read, notices (the stored last
//! applied id is older than the one the node wrote) and applies them again from the
//! Raft log before it goes on (see `state_machine.rs`). Log appends, votes, truncations
//! and purges always wait for their WAL flush, whatever the server's
//! `synchronous_commit`: they set it per transaction.
//!
//! Outages: when PostgreSQL cannot be reached, Raft's storage calls wait and retry with
//! backoff instead of failing (a failed Raft storage call would stop Raft for good).
//! Every write is an idempotent upsert or delete, and an apply batch skips entries the
//! database already holds, so a retry after a lost commit acknowledgement is safe.
//! Meanwhile the store reports itself unavailable, and the API answers 503
//! `STORAGE_UNAVAILABLE` at once. A probe notices when the database is back.
//!
//! A full disk on the server (`53100 disk_full`, or `53200 out_of_memory`) is retried
//! the same way, the failed statement being the probe; meanwhile the node refuses new
//! values (507 `NO_SPACE`) and is not ready, as with the embedded store.

mod log_store;
mod state_machine;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::PgPool;

pub use log_store::PgLogStore;
pub use state_machine::PgStateMachine;

use super::space::Writer as DiskWriter;
use super::DiskFull;
use crate::config::DatabaseSettings;

/// The embedded migrations (`migrations/` at the repository root).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Longest pause between retries while the database is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why the store could not be opened, phrased for the operator. Never contains the
/// password.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("invalid setting `database.ssl_mode`: {0}")]
    SslMode(String),
    #[error(
        "cannot connect to PostgreSQL at `database.host` {host}:{port}, database `{database}`, \
         as `database.username` {username}: {reason}"
    )]
    Connect {
        host: String,
        port: u16,
        database: String,
        username: String,
        reason: String,
    },
    #[error("cannot apply the database migrations: {0}")]
    Migrate(String),
    #[error("invalid setting `storage.data_dir`: {path} is not writable: {reason}")]
    DataDir { path: PathBuf, reason: String },
}

/// An opened PostgreSQL store: the three views openraft and the API need.
pub struct PgStore {
    pub log_store: PgLogStore,
    pub state_machine: PgStateMachine,
    pub handle: PgHandle,
}

/// Connects (failing fast if the database cannot be reached at start), applies the
/// migrations, and opens the store.
pub async fn open(
    settings: &DatabaseSettings,
    data_dir: &Path,
    disk_full: Arc<DiskFull>,
) -> Result<PgStore, OpenError> {
    super::check_writable(data_dir).map_err(|e| OpenError::DataDir {
        path: data_dir.to_owned(),
        reason: e.to_string(),
    })?;
    let ssl_mode =
        PgSslMode::from_str(&settings.ssl_mode).map_err(|e| OpenError::SslMode(e.to_string()))?;
    let mut options = PgConnectOptions::new()
        .host(&settings.host)
        .port(settings.port)
        .username(&settings.username)
        .password(&settings.password)
        .database(&settings.database)
        .ssl_mode(ssl_mode)
        .application_name("kvstore");
    if let Some(cert) = &settings.ssl_root_cert {
        options = options.ssl_root_cert(cert);
    }
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_conns)
        .min_connections(settings.min_conns)
        .max_lifetime(settings.max_conn_time)
        .idle_timeout(settings.max_idle_time)
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options)
        .await
        .map_err(|e| OpenError::Connect {
            host: settings.host.clone(),
            port: settings.port,
            database: settings.database.clone(),
            username: settings.username.clone(),
            reason: e.to_string(),
        })?;
    MIGRATOR
        .run(&pool)
        .await
        .map_err(|e| OpenError::Migrate(e.to_string()))?;
    let db = Db {
        pool,
        available: Arc::new(AtomicBool::new(true)),
        probing: Arc::new(AtomicBool::new(false)),
        disk_full,
    };
    let snapshot_dir = data_dir.join("snapshots");
    super::create_dir_durably(&snapshot_dir).map_err(|e| OpenError::DataDir {
        path: snapshot_dir.clone(),
        reason: e.to_string(),
    })?;
    let state_machine = PgStateMachine::new(db.clone(), snapshot_dir);
    Ok(PgStore {
        log_store: PgLogStore::new(db.clone()),
        handle: PgHandle {
            db,
            state_machine: state_machine.clone(),
        },
        state_machine,
    })
}

/// The pool plus what the store knows about the database's reachability.
#[derive(Clone)]
pub(crate) struct Db {
    pool: PgPool,
    available: Arc<AtomicBool>,
    /// Whether a probe task is already waiting for the database to come back.
    probing: Arc<AtomicBool>,
    /// Marked while a write is retried because the server's disk is full.
    disk_full: Arc<DiskFull>,
}

impl Db {
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs `op` until it succeeds or fails for a reason other than the database being
    /// unreachable. Callers must make `op` idempotent.
    pub(crate) async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> io::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let mut backoff = Duration::from_millis(50);
        let mut was_full = false;
        loop {
            match op().await {
                Ok(value) => {
                    self.mark_available();
                    if was_full {
                        self.disk_full.clear(DiskWriter::Database);
                    }
                    return Ok(value);
                }
                Err(e) if is_transient(&e) => {
                    self.mark_unavailable(what, &e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) if is_disk_full(&e) => {
                    was_full = true;
                    let error = io::Error::new(io::ErrorKind::StorageFull, format!("{what}: {e}"));
                    self.disk_full.mark(DiskWriter::Database, &error);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(io::Error::other(format!("{what}: {e}"))),
            }
        }
    }

    /// Whether a write is waiting for room on the server's disk.
    pub(crate) fn is_disk_full(&self) -> bool {
        self.disk_full.is_full()
    }

    /// Runs `op` once; an unreachable database is reported as `NotConnected`.
    pub(crate) async fn once<T>(
        &self,
        what: &str,
        op: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> io::Result<T> {
        match op.await {
            Ok(value) => {
                self.mark_available();
                Ok(value)
            }
            Err(e) if is_transient(&e) => {
                self.mark_unavailable(what, &e);
                Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("{what}: database unreachable: {e}"),
                ))
            }
            Err(e) => Err(io::Error::other(format!("{what}: {e}"))),
        }
    }

    fn mark_available(&self) {
        if !self.available.swap(true, Ordering::SeqCst) {
            tracing::info!("PostgreSQL is reachable again");
        }
    }

    fn mark_unavailable(&self, what: &str, e: &sqlx::Error) {
        if self.available.swap(false, Ordering::SeqCst) {
            tracing::warn!(operation = what, error = %e, "PostgreSQL is unreachable; retrying");
        }
        self.start_probe();
    }

    /// Polls the database while it is unreachable, so the node notices its return even
    /// when no Raft work is pending.
    fn start_probe(&self) {
        if self.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        let db = self.clone();
        tokio::spawn(async move {
            while !db.available.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if sqlx::query("SELECT 1").execute(&db.pool).await.is_ok() {
                    db.mark_available();
                }
            }
            db.probing.store(false, Ordering::SeqCst);
        });
    }
}

/// Errors that mean "the database cannot be reached right now", as opposed to a bug or
/// a constraint violation.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P01-57P03: shutting down or starting up;
            // 53300: too many connections; 40001/40P01: serialization or deadlock.
            code.starts_with("08")
                || matches!(
                    code.as_ref(),
                    "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01"
                )
        }),
        _ => false,
    }
}

/// Errors that mean "the server has no room for this write right now": its disk is
/// full (`53100 disk_full`) or it ran out of memory (`53200 out_of_memory`). Both pass
/// once an operator makes room, and a retried write is safe (see the module notes).
fn is_disk_full(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| matches!(code.as_ref(), "53100" | "53200")),
        _ => false,
    }
}

/// The API's direct view of the data.
#[derive(Clone)]
pub struct PgHandle {
    db: Db,
    /// Repairs the data before a read when PostgreSQL lost applies.
    state_machine: PgStateMachine,
}

impl PgHandle {
    /// The value of `key` as applied so far. The same statement reads the stored last
    /// applied id: when it is older than what this node applied (PostgreSQL crashed and
    /// lost applies; openraft's applied index, in memory, let the read through), the
    /// lost entries are applied again from the log before the key is read again.
    pub async fn get(&self, key: &str) -> io::Result<Option<String>> {
        let read = || {
            self.db.once(
                "read key",
                sqlx::query_as::<_, (Option<String>, Option<Vec<u8>>)>(
                    "SELECT (SELECT value FROM kv WHERE key = $1), \
                            (SELECT value FROM sm_meta WHERE name = $2)",
                )
                .bind(key)
                .bind(state_machine::LAST_APPLIED)
                .fetch_one(&self.db.pool),
            )
        };
        // Taken before the read: an apply that commits meanwhile raises it only after
        // its commit, so a healthy database is never found behind it.
        let known = self.state_machine.applied_index();
        let (value, stored) = read().await?;
        let stored_index = stored
            .and_then(|b| super::decode::<Option<crate::types::typ::LogId>>(&b).ok())
            .flatten()
            .map(|id| id.index);
        if known.is_none_or(|known| stored_index.is_some_and(|s| s >= known)) {
            return Ok(value);
        }
        self.state_machine.repair().await?;
        Ok(read().await?.0)
    }

    pub async fn len(&self) -> io::Result<u64> {
        let count = self
            .db
            .once(
                "count keys",
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM kv").fetch_one(&self.db.pool),
            )
            .await?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    pub async fn size_bytes(&self) -> io::Result<u64> {
        let bytes = self
            .db
            .once(
                "table sizes",
                sqlx::query_scalar::<_, i64>(
                    "SELECT (pg_total_relation_size('kv') + pg_total_relation_size('raft_log') \
                     + pg_total_relation_size('raft_meta') + pg_total_relation_size('sm_meta'))::BIGINT",
                )
                .fetch_one(&self.db.pool),
            )
            .await?;
        Ok(u64::try_from(bytes).unwrap_or_default())
    }

    pub async fn retired_ids(&self) -> io::Result<std::collections::BTreeSet<u64>> {
        let bytes = self
            .db
            .once(
                "read retired ids",
                sqlx::query_scalar::<_, Vec<u8>>("SELECT value FROM sm_meta WHERE name = $1")
                    .bind(state_machine::RETIRED)
                    .fetch_optional(&self.db.pool),
            )
            .await?;
        match bytes {
            Some(bytes) => super::decode(&bytes),
            None => Ok(Default::default()),
        }
    }

    pub fn is_available(&self) -> bool {
        self.db.available.load(Ordering::SeqCst)
    }

    pub async fn close(&self) {
        self.db.pool.close().await;
    }
}

/// Reads one JSON metadata value from `table` (`raft_meta` or `sm_meta`).
async fn read_meta<T: serde::de::DeserializeOwned>(
    db: &Db,
    table: Meta,
    name: &'static str,
) -> io::Result<Option<T>> {
    let bytes = db
        .retry(name, || {
            sqlx::query_scalar::<_, Vec<u8>>(table.select())
                .bind(name)
                .fetch_optional(db.pool())
        })
        .await?;
    bytes.map(|b| super::decode(&b)).transpose()
}

/// The two metadata tables, with their statements written out (never assembled).
#[derive(Clone, Copy)]
enum Meta {
    Raft,
    StateMachine,
}

impl Meta {
    fn select(self) -> &'static str {
        match self {
            Meta::Raft => "SELECT value FROM raft_meta WHERE name = $1",
            Meta::StateMachine => "SELECT value FROM sm_meta WHERE name = $1",
        }
    }

    /// Writes one value, durably whatever the server's `synchronous_commit` (a vote,
    /// the purge marker, the snapshot record: a purge relies on the snapshot's data
    /// being flushed, and this commit flushes the WAL up to it).
    fn upsert(self) -> &'static str {
        match self {
            Meta::Raft => {
                "INSERT INTO raft_meta (name, value) SELECT $1, $2 \
                 FROM (SELECT set_config('synchronous_commit', 'on', true)) AS sync \
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
            }
            Meta::StateMachine => {
                "INSERT INTO sm_meta (name, value) SELECT $1, $2 \
                 FROM (SELECT set_config('synchronous_commit', 'on', true)) AS sync \
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
            }
        }
    }
}

/// Log indexes are `u64` in Raft and `BIGINT` in PostgreSQL.
fn to_i64(index: u64) -> i64 {
    i64::try_from(index).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::atomic::AtomicU32;

    use super::*;

    /// An error as PostgreSQL reports it, with its SQLSTATE.
    #[derive(Debug)]
    struct ServerError(&'static str);

    impl std::fmt::Display for ServerError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for ServerError {}

    impl sqlx::error::DatabaseError for ServerError {
        fn message(&self) -> &str {
            "server error"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn server_error(code: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(ServerError(code)))
    }

    /// A store whose pool never connects: the operations under test do not use it.
    fn db(disk_full: Arc<DiskFull>) -> Db {
        Db {
            pool: PgPoolOptions::new()
                .connect_lazy("postgres://kvstore@127.0.0.1:1/kvstore")
                .expect("a lazy pool"),
            available: Arc::new(AtomicBool::new(true)),
            probing: Arc::new(AtomicBool::new(false)),
            disk_full,
        }
    }

    /// `53100 disk_full` and `53200 out_of_memory` are retried, and the node counts as
    /// out of space meanwhile (new values refused with 507, not ready); the mark goes
    /// once the write succeeds. Other server errors fail at once, as before.
    #[tokio::test]
    async fn a_full_disk_on_the_server_is_retried_and_marked_until_the_write_succeeds() {
        for code in ["53100", "53200"] {
            let disk_full = Arc::new(DiskFull::default());
            let db = db(disk_full.clone());
            let attempts = AtomicU32::new(0);
            let marked_meanwhile = AtomicBool::new(false);
            let written = db
                .retry("append log entries", || {
                    let attempt = attempts.fetch_add(1, Ordering::SeqCst);
                    if attempt > 0 {
                        marked_meanwhile.fetch_or(disk_full.is_full(), Ordering::SeqCst);
                    }
                    async move {
                        if attempt < 2 {
                            Err(server_error(code))
                        } else {
                            Ok(attempt)
                        }
                    }
                })
                .await
                .expect("written once there is room");
            assert_eq!(written, 2, "{code}");
            assert!(marked_meanwhile.load(Ordering::SeqCst), "{code}");
            assert!(!disk_full.is_full(), "{code}");
            assert!(db.available.load(Ordering::SeqCst), "{code}: not an outage");
        }

        let disk_full = Arc::new(DiskFull::default());
        let db = db(disk_full.clone());
        let err = db
            .retry("append log entries", || async {
                Err::<(), _>(server_error("23505"))
            })
            .await
            .expect_err("not retried");
        assert!(err.to_string().contains("23505"), "{err}");
        assert!(!disk_full.is_full());
    }
}
