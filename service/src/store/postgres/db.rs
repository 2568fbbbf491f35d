//! The connection pool, and what the store knows about the database's reachability:
//! retries while PostgreSQL is unreachable or its disk is full, and the probe that
//! notices its return.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::store::space::Writer as DiskWriter;
use crate::store::DiskFull;

/// Longest pause between retries while the database is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

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
    pub(super) fn new(pool: PgPool, disk_full: Arc<DiskFull>) -> Self {
        Self {
            pool,
            available: Arc::new(AtomicBool::new(true)),
            probing: Arc::new(AtomicBool::new(false)),
            disk_full,
        }
    }

    /// Whether the database answered the last statement (or the probe since).
    pub(super) fn is_available(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }

    /// Closes the pool's connections; called at shutdown.
    pub(super) async fn close(&self) {
        self.pool.close().await;
    }

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
pub(super) fn is_transient(e: &sqlx::Error) -> bool {
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
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://kvstore@127.0.0.1:1/kvstore")
            .expect("a lazy pool");
        Db::new(pool, disk_full)
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
