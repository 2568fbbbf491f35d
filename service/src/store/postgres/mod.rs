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

mod apply;
mod db;
mod log_store;
mod reader;
mod state_machine;

use std::io;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

pub use log_store::PgLogStore;
pub use reader::PgHandle;
pub use state_machine::PgStateMachine;

use super::contract::{Backend, Open, OpenError, Opened};
use super::DiskFull;
use crate::config::{DatabaseSettings, Settings, StorageType};
use db::Db;

/// The embedded migrations (`migrations/` at the repository root).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The PostgreSQL backend (`storage.type: database`).
pub struct Postgres;

impl Backend for Postgres {
    type Log = PgLogStore;
    type StateMachine = PgStateMachine;
    type Reader = PgHandle;
}

impl Open for Postgres {
    async fn open(
        settings: &Settings,
        disk_full: Arc<DiskFull>,
    ) -> Result<Opened<Self>, OpenError> {
        open(&settings.database, &settings.storage.data_dir, disk_full).await
    }
}

/// Connects (failing fast if the database cannot be reached at start), applies the
/// migrations, and opens the store; its snapshot files go under `data_dir`.
pub async fn open(
    settings: &DatabaseSettings,
    data_dir: &Path,
    disk_full: Arc<DiskFull>,
) -> Result<Opened<Postgres>, OpenError> {
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
    let db = Db::new(pool, disk_full);
    let snapshot_dir = data_dir.join("snapshots");
    super::create_dir_durably(&snapshot_dir).map_err(|e| OpenError::DataDir {
        path: snapshot_dir.clone(),
        reason: e.to_string(),
    })?;
    let state_machine = PgStateMachine::new(db.clone(), snapshot_dir);
    Ok(Opened {
        name: StorageType::Database.as_str(),
        log: PgLogStore::new(db.clone()),
        reader: PgHandle {
            db,
            state_machine: state_machine.clone(),
        },
        state_machine,
    })
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
