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
use crate::types::{KeyMeta, Lease, Record};

/// A key's revisions as `kv` keeps them: create_revision, mod_revision, version, lease.
type Revisions = (i64, i64, i64, i64);

fn meta((create, modified, version, lease): Revisions) -> KeyMeta {
    KeyMeta {
        create_revision: create as u64,
        mod_revision: modified as u64,
        version: version as u64,
        lease: lease as u64,
    }
}

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
    async fn get(&self, key: &str) -> io::Result<Option<Record>> {
        type Found = Option<(String, i64, i64, i64, i64)>;
        let found: Found = self
            .read_applied(|| async {
                let (found, stored) = self
                    .db
                    .once(
                        "read key",
                        sqlx::query_as::<_, (Option<String>, Option<Vec<i64>>, Option<Vec<u8>>)>(
                            "SELECT (SELECT value FROM kv WHERE key = $1), \
                                    (SELECT ARRAY[create_revision, mod_revision, version, lease] \
                                     FROM kv WHERE key = $1), \
                                    (SELECT value FROM sm_meta WHERE name = $2)",
                        )
                        .bind(key)
                        .bind(LAST_APPLIED)
                        .fetch_one(self.db.pool()),
                    )
                    .await
                    .map(|(value, revisions, stored)| {
                        let found = value.zip(revisions).and_then(|(value, r)| match r[..] {
                            [c, m, v, l] => Some((value, c, m, v, l)),
                            _ => None,
                        });
                        (found, stored)
                    })?;
                Ok((found, stored))
            })
            .await?;
        Ok(found.map(|(value, c, m, v, l)| Record {
            value,
            meta: meta((c, m, v, l)),
        }))
    }

    /// Keys compare byte by byte (`COLLATE "C"`), whatever the database's collation,
    /// so that the order is the same as the embedded store's.
    async fn range(
        &self,
        start: &str,
        end: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> io::Result<Vec<(String, Record)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let max_bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        type Page = (Vec<String>, Vec<String>, Vec<i64>, Option<Vec<u8>>);
        let (keys, values, revisions) = self
            .read_applied(|| async {
                let (keys, values, revisions, stored) = self
                    .db
                    .once(
                        "read a range of keys",
                        sqlx::query_as::<_, Page>(
                            // `upto`: the bytes of the page up to and including
                            // this pair; a pair is taken while those before it
                            // hold less than $5.
                            "WITH page AS (SELECT key, value, create_revision, mod_revision, \
                                   version, lease, sum(octet_length(key) + octet_length(value)) \
                                     OVER (ORDER BY key COLLATE \"C\") AS upto \
                                 FROM kv \
                                 WHERE key COLLATE \"C\" >= $1 \
                                   AND ($2::TEXT IS NULL OR key COLLATE \"C\" < $2) \
                                 ORDER BY key COLLATE \"C\" LIMIT $3), \
                             taken AS (SELECT * FROM page \
                                 WHERE upto - octet_length(key) - octet_length(value) < $5) \
                             SELECT ARRAY(SELECT key FROM taken ORDER BY key COLLATE \"C\"), \
                                    ARRAY(SELECT value FROM taken ORDER BY key COLLATE \"C\"), \
                                    ARRAY(SELECT n FROM taken, LATERAL unnest(ARRAY[ \
                                            create_revision, mod_revision, version, lease]) \
                                          WITH ORDINALITY AS r(n, i) \
                                          ORDER BY key COLLATE \"C\", i), \
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
                Ok(((keys, values, revisions), stored))
            })
            .await?;
        let revisions = revisions
            .chunks_exact(4)
            .map(|r| meta((r[0], r[1], r[2], r[3])));
        Ok(keys
            .into_iter()
            .zip(values)
            .zip(revisions)
            .map(|((key, value), meta)| (key, Record { value, meta }))
            .collect())
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

    async fn lease(&self, id: u64) -> io::Result<Option<Lease>> {
        let row = self
            .read_applied(|| async {
                let (row, stored) = self
                    .db
                    .once(
                        "read lease",
                        sqlx::query_as::<_, (Option<Vec<i64>>, Option<Vec<u8>>)>(
                            "SELECT (SELECT ARRAY[ttl_seconds, renewed] FROM leases WHERE id = $1), \
                                    (SELECT value FROM sm_meta WHERE name = $2)",
                        )
                        .bind(super::to_i64(id))
                        .bind(LAST_APPLIED)
                        .fetch_one(self.db.pool()),
                    )
                    .await?;
                Ok((row, stored))
            })
            .await?;
        Ok(row.and_then(|r| match r[..] {
            [ttl_seconds, renewed] => Some(Lease {
                id,
                ttl_seconds: ttl_seconds as u64,
                renewed: renewed as u64,
            }),
            _ => None,
        }))
    }

    async fn lease_keys(&self, id: u64, limit: usize) -> io::Result<Vec<String>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read_applied(|| async {
            let (keys, stored) = self
                .db
                .once(
                    "read a lease's keys",
                    sqlx::query_as::<_, (Vec<String>, Option<Vec<u8>>)>(
                        "SELECT ARRAY(SELECT key FROM kv WHERE lease = $1 \
                                      ORDER BY key COLLATE \"C\" LIMIT $2), \
                                (SELECT value FROM sm_meta WHERE name = $3)",
                    )
                    .bind(super::to_i64(id))
                    .bind(limit)
                    .bind(LAST_APPLIED)
                    .fetch_one(self.db.pool()),
                )
                .await?;
            Ok((keys, stored))
        })
        .await
    }

    async fn leases(&self) -> io::Result<Vec<Lease>> {
        let rows = self
            .db
            .once(
                "read leases",
                sqlx::query_as::<_, (i64, i64, i64)>("SELECT id, ttl_seconds, renewed FROM leases")
                    .fetch_all(self.db.pool()),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, ttl_seconds, renewed)| Lease {
                id: id as u64,
                ttl_seconds: ttl_seconds as u64,
                renewed: renewed as u64,
            })
            .collect())
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
                     + pg_total_relation_size('raft_meta') + pg_total_relation_size('sm_meta') \
                     + pg_total_relation_size('leases'))::BIGINT",
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
