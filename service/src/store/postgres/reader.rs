//! The node's direct reads of PostgreSQL: single statements that fail at once, with
//! `NotConnected`, when the database cannot be reached (the API answers 503 then).

use std::collections::BTreeSet;
use std::future::Future;
use std::io;

use super::db::Db;
use super::state_machine::PgStateMachine;
use crate::store::contract::meta::{LAST_APPLIED, RETIRED};
use crate::store::contract::ReadBackend;
use crate::types::typ::LogId;

/// Reads of the applied data.
#[derive(Clone)]
pub struct PgHandle {
    pub(super) db: Db,
    /// Repairs the data before a read when PostgreSQL lost applies.
    pub(super) state_machine: PgStateMachine,
}

impl PgHandle {
    /// Runs `read`, which returns what it read with the stored last applied id, read
    /// by the same statement. When that id is older than what this node applied
    /// (PostgreSQL crashed and lost applies; openraft's applied index, in memory, let
    /// the read through), the lost entries are applied again from the log before
    /// `read` runs again.
    async fn read_applied<T, F, Fut>(&self, read: F) -> io::Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = io::Result<(T, Option<Vec<u8>>)>>,
    {
        // Taken before the read: an apply that commits meanwhile raises it only after
        // its commit, so a healthy database is never found behind it.
        let known = self.state_machine.applied_index();
        let (value, stored) = read().await?;
        let stored_index = stored
            .and_then(|b| crate::store::decode::<Option<LogId>>(&b).ok())
            .flatten()
            .map(|id| id.index);
        if known.is_none_or(|known| stored_index.is_some_and(|s| s >= known)) {
            return Ok(value);
        }
        self.state_machine.repair().await?;
        Ok(read().await?.0)
    }
}

impl ReadBackend for PgHandle {
    async fn get(&self, key: &str) -> io::Result<Option<String>> {
        self.read_applied(|| {
            self.db.once(
                "read key",
                sqlx::query_as::<_, (Option<String>, Option<Vec<u8>>)>(
                    "SELECT (SELECT value FROM kv WHERE key = $1), \
                            (SELECT value FROM sm_meta WHERE name = $2)",
                )
                .bind(key)
                .bind(LAST_APPLIED)
                .fetch_one(self.db.pool()),
            )
        })
        .await
    }

    /// Keys compare byte by byte (`COLLATE "C"`), whatever the database's collation,
    /// so that the order is the same as the embedded store's.
    async fn range(
        &self,
        start: &str,
        end: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> io::Result<Vec<(String, String)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let max_bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        let (keys, values) = self
            .read_applied(|| async {
                let (keys, values, stored) = self
                    .db
                    .once(
                        "read a range of keys",
                        sqlx::query_as::<_, (Vec<String>, Vec<String>, Option<Vec<u8>>)>(
                            // `upto`: the bytes of the page up to and including
                            // this pair; a pair is taken while those before it
                            // hold less than $5.
                            "WITH page AS (SELECT key, value, \
                                   sum(octet_length(key) + octet_length(value)) \
                                     OVER (ORDER BY key COLLATE \"C\") AS upto \
                                 FROM kv \
                                 WHERE key COLLATE \"C\" >= $1 \
                                   AND ($2::TEXT IS NULL OR key COLLATE \"C\" < $2) \
                                 ORDER BY key COLLATE \"C\" LIMIT $3), \
                             taken AS (SELECT key, value FROM page \
                                 WHERE upto - octet_length(key) - octet_length(value) < $5) \
                             SELECT ARRAY(SELECT key FROM taken ORDER BY key COLLATE \"C\"), \
                                    ARRAY(SELECT value FROM taken ORDER BY key COLLATE \"C\"), \
                                    (SELECT value FROM sm_meta WHERE name = $4)",
                        )
                        .bind(start)
                        .bind(end)
                        .bind(limit)
                        .bind(LAST_APPLIED)
                        .bind(max_bytes)
                        .fetch_one(self.db.pool()),
                    )
                    .await?;
                Ok(((keys, values), stored))
            })
            .await?;
        Ok(keys.into_iter().zip(values).collect())
    }

    /// Counted by PostgreSQL over the key index (see the migration that makes `kv.key`
    /// compare byte by byte): no key leaves the database.
    async fn count_range(&self, start: &str, end: Option<&str>) -> io::Result<u64> {
        let count = self
            .read_applied(|| {
                self.db.once(
                    "count a range of keys",
                    sqlx::query_as::<_, (i64, Option<Vec<u8>>)>(
                        "SELECT (SELECT count(*) FROM kv \
                                 WHERE key COLLATE \"C\" >= $1 \
                                   AND ($2::TEXT IS NULL OR key COLLATE \"C\" < $2)), \
                                (SELECT value FROM sm_meta WHERE name = $3)",
                    )
                    .bind(start)
                    .bind(end)
                    .bind(LAST_APPLIED)
                    .fetch_one(self.db.pool()),
                )
            })
            .await?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    async fn count(&self) -> io::Result<u64> {
        let count = self
            .db
            .once(
                "count keys",
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM kv").fetch_one(self.db.pool()),
            )
            .await?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    /// PostgreSQL's tables with their indexes.
    async fn size_bytes(&self) -> io::Result<u64> {
        let bytes = self
            .db
            .once(
                "table sizes",
                sqlx::query_scalar::<_, i64>(
                    "SELECT (pg_total_relation_size('kv') + pg_total_relation_size('raft_log') \
                     + pg_total_relation_size('raft_meta') + pg_total_relation_size('sm_meta'))::BIGINT",
                )
                .fetch_one(self.db.pool()),
            )
            .await?;
        Ok(u64::try_from(bytes).unwrap_or_default())
    }

    async fn retired_ids(&self) -> io::Result<BTreeSet<u64>> {
        let bytes = self
            .db
            .once(
                "read retired ids",
                sqlx::query_scalar::<_, Vec<u8>>("SELECT value FROM sm_meta WHERE name = $1")
                    .bind(RETIRED)
                    .fetch_optional(self.db.pool()),
            )
            .await?;
        match bytes {
            Some(bytes) => crate::store::decode(&bytes),
            None => Ok(Default::default()),
        }
    }

    fn is_available(&self) -> bool {
        self.db.is_available()
    }

    /// Nothing waits in memory: every write retries by itself (see `Db::retry`).
    async fn retry_failed_writes(&self) {}

    /// Every apply is committed before it returns; the pool only has to let go.
    async fn close(&self) -> io::Result<()> {
        self.db.close().await;
        Ok(())
    }
}
