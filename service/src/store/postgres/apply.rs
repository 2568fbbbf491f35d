//! How an apply batch reaches PostgreSQL. What each command does is decided by the
//! shared engine (`store::commands`) over the rows it reads first ([`Memory`]); the
//! changes then reach the database in one statement (the common case: point writes),
//! or in a transaction with the membership records, leases, ranges and the entries
//! PostgreSQL lost, if it lost any. Each expects to find the last applied id it last
//! wrote, so that nothing is ever built on lost applies.

use std::collections::BTreeSet;
use std::io;

use openraft::entry::RaftEntry;
use openraft::EntryPayload;
use sqlx::{PgConnection, Postgres, Transaction};

use super::{to_i64, Db, Meta};
use crate::store::commands::{self, Memory, RangeRead, Reads};
use crate::store::contract::meta::{LAST_APPLIED, MEMBERSHIP, RETIRED};
use crate::store::{decode, Command, CommandResult, Proposal};
use crate::types::typ::{Entry, LogId, StoredMembership};
use crate::types::{KeyMeta, Lease, Record};

/// The stored last applied log id: the id, and the row's bytes exactly as stored
/// (`None`: no row yet), which the next apply expects to find unchanged.
#[derive(Clone, Debug, Default)]
pub(super) struct Applied {
    pub(super) id: Option<LogId>,
    pub(super) stored: Option<Vec<u8>>,
}

impl Applied {
    pub(super) fn read(stored: Option<Vec<u8>>) -> Self {
        let id = stored
            .as_deref()
            .and_then(|bytes| decode::<Option<LogId>>(bytes).ok().flatten());
        Self { id, stored }
    }

    pub(super) fn fresh(&self, entry: &Entry) -> bool {
        self.id.as_ref().is_none_or(|a| entry.index() > a.index)
    }

    pub(super) fn index(&self) -> Option<u64> {
        self.id.as_ref().map(|id| id.index)
    }
}

/// The database holds a last applied id this node cannot build on.
fn lost_applies(what: String) -> sqlx::Error {
    sqlx::Error::InvalidArgument(format!(
        "the last applied log id in the database is not the one this node wrote: {what}"
    ))
}

/// The common batch, point writes only: the rows it touches are read, then its
/// changes are written in one statement. `None` when the stored last applied id is
/// not `applied`: the statement then changed nothing.
pub(super) async fn in_one_statement(
    db: &Db,
    entries: &[Entry],
    applied: &Applied,
) -> Result<Option<(Vec<CommandResult>, Applied)>, sqlx::Error> {
    let fresh = |entry: &Entry| applied.fresh(entry);
    let Some(last) = entries.iter().rev().find(|e| fresh(e)).map(|e| e.log_id()) else {
        let results = entries
            .iter()
            .map(|_| CommandResult::AppliedEarlier)
            .collect();
        return Ok(Some((results, applied.clone())));
    };
    let mut conn = db.pool().acquire().await?;
    let (results, memory) = apply_points(&mut conn, entries, fresh).await?;
    let rows = Rows::from(&memory);
    let stored = serde_json::to_vec(&Some(last)).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    // The statement does not wait for its WAL flush (see the module's notes). Its
    // parts touch different keys: the changes hold one final record per key. Every
    // part runs only if the stored last applied id is the one this node expects
    // ($6; NULL: no row), so a database that lost applies, or a retry of an
    // attempt that did commit, changes nothing here.
    let written = sqlx::query(
        "WITH async AS (SELECT set_config('synchronous_commit', 'off', true)), \
         ok AS (SELECT 1 WHERE (SELECT value FROM sm_meta WHERE name = $4) \
                               IS NOT DISTINCT FROM $6::BYTEA), \
         put AS (INSERT INTO kv (key, value, create_revision, mod_revision, version, lease) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $7::BIGINT[], $8::BIGINT[], \
                                      $9::BIGINT[], $10::BIGINT[]) \
                 WHERE EXISTS (SELECT 1 FROM ok) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
                   create_revision = EXCLUDED.create_revision, \
                   mod_revision = EXCLUDED.mod_revision, version = EXCLUDED.version, \
                   lease = EXCLUDED.lease), \
         gone AS (DELETE FROM kv WHERE key = ANY($3::TEXT[]) AND EXISTS (SELECT 1 FROM ok)) \
         INSERT INTO sm_meta (name, value) SELECT $4, $5 FROM async, ok \
         ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
    )
    .bind(&rows.keys)
    .bind(&rows.values)
    .bind(&rows.gone)
    .bind(LAST_APPLIED)
    .bind(stored.as_slice())
    .bind(applied.stored.as_deref())
    .bind(&rows.create)
    .bind(&rows.modified)
    .bind(&rows.version)
    .bind(&rows.lease)
    .execute(&mut *conn)
    .await?;
    if written.rows_affected() != 1 {
        return Ok(None);
    }
    let now = Applied {
        id: Some(last),
        stored: Some(stored),
    };
    Ok(Some((results, now)))
}

/// A batch in one transaction with the membership records it changes, after the
/// entries PostgreSQL lost, if it lost any (see `PgStateMachine::apply_batch`).
pub(super) async fn in_transaction(
    db: &Db,
    batch: &[Entry],
    expected: &Applied,
) -> Result<(Vec<CommandResult>, Applied), sqlx::Error> {
    // Unlike the common batch, this transaction waits for its WAL flush (its
    // metadata writes ask for it): membership changes and repairs are rare.
    let mut txn = db.pool().begin().await?;
    let applied = Applied::read(select_meta(&mut txn, LAST_APPLIED).await?);
    let mut lost = Vec::new();
    if applied.stored != expected.stored {
        let batch_last = batch.last().map(|e| e.index());
        if applied.id.is_some() && applied.index() >= batch_last.max(expected.index()) {
            // An earlier attempt of this batch committed; its answer was lost.
        } else if applied.index() < expected.index() {
            let before = batch
                .first()
                .map_or(expected.index().map_or(0, |i| i + 1), |e| e.index());
            lost = read_log_between(&mut txn, applied.index(), before).await?;
            tracing::warn!(
                stored = ?applied.id,
                applied = ?expected.id,
                entries = lost.len(),
                "PostgreSQL lost applies (it crashed before flushing them); applying \
                 them again from the Raft log"
            );
        } else {
            return Err(lost_applies(format!(
                "found {:?}, expected {:?}; does another process write this node's database?",
                applied.id, expected.id
            )));
        }
    }
    let entries: Vec<Entry> = lost.into_iter().chain(batch.iter().cloned()).collect();
    let entries = entries.as_slice();
    let replayed = entries.len() - batch.len();
    let fresh = |entry: &Entry| applied.fresh(entry);
    // A command that touches leases or ranges must see every write before it: the
    // entries are applied in runs of point writes, each such command on its own
    // after the run before it is written.
    let mut results = Vec::with_capacity(entries.len());
    for run in entries.split_inclusive(|e| fresh(e) && is_special(e)) {
        let (points, special) = match run.split_last() {
            Some((last, points)) if fresh(last) && is_special(last) => (points, Some(last)),
            _ => (run, None),
        };
        let (point_results, memory) = apply_points(&mut txn, points, fresh).await?;
        write_changes(&mut txn, &memory).await?;
        results.extend(point_results);
        if let Some(entry) = special {
            results.push(apply_special(&mut txn, entry).await?);
        }
    }
    for entry in entries.iter().filter(|e| fresh(e)) {
        let EntryPayload::Membership(membership) = &entry.payload else {
            continue;
        };
        // Nodes that leave the membership are retired for good.
        let previous = select_meta(&mut txn, MEMBERSHIP).await?;
        if let Some(previous) = previous.and_then(|b| decode::<StoredMembership>(&b).ok()) {
            let mut retired: BTreeSet<u64> = select_meta(&mut txn, RETIRED)
                .await?
                .and_then(|b| decode(&b).ok())
                .unwrap_or_default();
            if crate::store::retire_leavers(&mut retired, &previous, membership) {
                upsert_meta(&mut txn, RETIRED, &retired).await?;
            }
        }
        let stored = StoredMembership::new(Some(entry.log_id()), membership.clone());
        upsert_meta(&mut txn, MEMBERSHIP, &stored).await?;
    }
    let mut now = applied;
    if let Some(last) = entries.last().filter(|e| now.fresh(e)) {
        let id = Some(last.log_id());
        let stored = upsert_meta(&mut txn, LAST_APPLIED, &id).await?;
        now = Applied {
            id,
            stored: Some(stored),
        };
    }
    txn.commit().await?;
    Ok((results[replayed..].to_vec(), now))
}

/// The client command of `entry`, if it carries one.
fn command(entry: &Entry) -> Option<&Command> {
    match &entry.payload {
        EntryPayload::Normal(Proposal { command, .. }) => Some(command),
        _ => None,
    }
}

/// Whether `entry` touches leases or ranges (or is a membership change, which needs
/// the transaction too).
pub(super) fn is_special(entry: &Entry) -> bool {
    command(entry).is_some_and(Command::touches_leases_or_ranges)
}

/// Applies a run of point writes (and blank or membership entries, which change no
/// key): reads the rows they touch, then runs the engine over them. Returns one result
/// per entry and the changes, not yet written.
async fn apply_points(
    conn: &mut PgConnection,
    entries: &[Entry],
    fresh: impl Fn(&Entry) -> bool + Copy,
) -> Result<(Vec<CommandResult>, Memory), sqlx::Error> {
    let mut reads = Reads::default();
    for command in entries.iter().filter(|e| fresh(e)).filter_map(command) {
        let more = commands::reads(command);
        reads.keys.extend(more.keys);
        reads.values.extend(more.values);
    }
    let mut memory = read_rows(conn, &reads).await?;
    let results = entries
        .iter()
        .map(|entry| match (command(entry), fresh(entry)) {
            (Some(_), false) => Ok(CommandResult::AppliedEarlier),
            (Some(command), true) => commands::apply(&mut memory, entry.index(), command),
            (None, _) => Ok(CommandResult::None),
        })
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok((results, memory))
}

/// Applies one command that touches leases or ranges, in `txn`, after every write
/// before it.
async fn apply_special(
    txn: &mut Transaction<'_, Postgres>,
    entry: &Entry,
) -> Result<CommandResult, sqlx::Error> {
    let Some(command) = command(entry) else {
        return Ok(CommandResult::None);
    };
    if let Command::DeleteRange { start, end } = command {
        return Ok(CommandResult::DeletedRange {
            count: delete_range(txn, start, end.as_deref()).await?,
        });
    }
    let mut memory = read_rows(txn, &commands::reads(command)).await?;
    let result = commands::apply(&mut memory, entry.index(), command)
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    write_changes(txn, &memory).await?;
    Ok(result)
}

/// One row of `kv` as the engine reads it: key, value ('' when only the revisions are
/// read), create_revision, mod_revision, version, lease.
type Row = (String, String, i64, i64, i64, i64);

fn record(row: Row) -> (String, Record) {
    let (key, value, create, modified, version, lease) = row;
    let meta = KeyMeta {
        create_revision: create as u64,
        mod_revision: modified as u64,
        version: version as u64,
        lease: lease as u64,
    };
    (key, Record { value, meta })
}

/// Reads what the engine will read for `reads` into a [`Memory`].
async fn read_rows(conn: &mut PgConnection, reads: &Reads) -> Result<Memory, sqlx::Error> {
    let mut memory = Memory::default();
    if !reads.keys.is_empty() {
        let rows = sqlx::query_as::<_, Row>(
            "SELECT key, CASE WHEN key = ANY($2) THEN value ELSE '' END, \
                    create_revision, mod_revision, version, lease \
             FROM kv WHERE key = ANY($1)",
        )
        .bind(&reads.keys)
        .bind(&reads.values)
        .fetch_all(&mut *conn)
        .await?;
        memory.records.extend(rows.into_iter().map(record));
    }
    for read in &reads.ranges {
        let pairs = read_range(conn, read).await?;
        memory.ranges.insert(read.clone(), pairs);
    }
    let leases: Vec<i64> = reads.leases.iter().map(|id| to_i64(*id)).collect();
    if !leases.is_empty() {
        let rows = sqlx::query_as::<_, (i64, i64, i64)>(
            "SELECT id, ttl_seconds, renewed FROM leases WHERE id = ANY($1)",
        )
        .bind(&leases)
        .fetch_all(&mut *conn)
        .await?;
        for (id, ttl_seconds, renewed) in rows {
            let lease = Lease {
                id: id as u64,
                ttl_seconds: ttl_seconds as u64,
                renewed: renewed as u64,
            };
            memory.leases.insert(lease.id, lease);
        }
    }
    let attached: Vec<i64> = reads.lease_keys.iter().map(|id| to_i64(*id)).collect();
    if !attached.is_empty() {
        let rows = sqlx::query_as::<_, Row>(
            "SELECT key, '', create_revision, mod_revision, version, lease \
             FROM kv WHERE lease = ANY($1)",
        )
        .bind(&attached)
        .fetch_all(&mut *conn)
        .await?;
        memory.records.extend(rows.into_iter().map(record));
    }
    Ok(memory)
}

/// A transaction's range read, in byte order of the keys, ending early at its byte
/// bound.
async fn read_range(
    conn: &mut PgConnection,
    read: &RangeRead,
) -> Result<Vec<(String, Record)>, sqlx::Error> {
    let rows = sqlx::query_as::<_, Row>(
        "SELECT key, value, create_revision, mod_revision, version, lease FROM kv \
         WHERE key COLLATE \"C\" >= $1 AND ($2::TEXT IS NULL OR key COLLATE \"C\" < $2) \
         ORDER BY key COLLATE \"C\" LIMIT $3",
    )
    .bind(&read.start)
    .bind(read.end.as_deref())
    .bind(to_i64(read.limit as u64))
    .fetch_all(&mut *conn)
    .await?;
    let mut pairs = Vec::new();
    let mut bytes = 0;
    for row in rows {
        if bytes >= read.max_bytes {
            break;
        }
        let (key, record) = record(row);
        bytes += key.len() + record.value.len();
        pairs.push((key, record));
    }
    Ok(pairs)
}

/// The changes of a [`Memory`] as the columns of an upsert, and the keys to delete.
#[derive(Default)]
struct Rows {
    keys: Vec<String>,
    values: Vec<String>,
    create: Vec<i64>,
    modified: Vec<i64>,
    version: Vec<i64>,
    lease: Vec<i64>,
    gone: Vec<String>,
}

impl From<&Memory> for Rows {
    fn from(memory: &Memory) -> Self {
        let mut rows = Rows::default();
        for (key, record) in &memory.changes {
            match record {
                Some(record) => {
                    rows.keys.push(key.clone());
                    rows.values.push(record.value.clone());
                    rows.create.push(to_i64(record.meta.create_revision));
                    rows.modified.push(to_i64(record.meta.mod_revision));
                    rows.version.push(to_i64(record.meta.version));
                    rows.lease.push(to_i64(record.meta.lease));
                }
                None => rows.gone.push(key.clone()),
            }
        }
        rows
    }
}

/// Writes the engine's changes: records, deletes, leases.
async fn write_changes(conn: &mut PgConnection, memory: &Memory) -> Result<(), sqlx::Error> {
    let rows = Rows::from(memory);
    if !rows.keys.is_empty() {
        sqlx::query(
            "INSERT INTO kv (key, value, create_revision, mod_revision, version, lease) \
             SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], \
                                  $5::BIGINT[], $6::BIGINT[]) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
               create_revision = EXCLUDED.create_revision, \
               mod_revision = EXCLUDED.mod_revision, version = EXCLUDED.version, \
               lease = EXCLUDED.lease",
        )
        .bind(&rows.keys)
        .bind(&rows.values)
        .bind(&rows.create)
        .bind(&rows.modified)
        .bind(&rows.version)
        .bind(&rows.lease)
        .execute(&mut *conn)
        .await?;
    }
    if !rows.gone.is_empty() {
        sqlx::query("DELETE FROM kv WHERE key = ANY($1)")
            .bind(&rows.gone)
            .execute(&mut *conn)
            .await?;
    }
    for (id, lease) in &memory.lease_changes {
        match lease {
            Some(lease) => sqlx::query(
                "INSERT INTO leases (id, ttl_seconds, renewed) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET ttl_seconds = EXCLUDED.ttl_seconds, \
                   renewed = EXCLUDED.renewed",
            )
            .bind(to_i64(lease.id))
            .bind(to_i64(lease.ttl_seconds))
            .bind(to_i64(lease.renewed)),
            None => sqlx::query("DELETE FROM leases WHERE id = $1").bind(to_i64(*id)),
        }
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Deletes the keys in `[start, end)`, in byte order as every range is (`COLLATE
/// "C"`, which the key index serves), in one statement; returns how many there were.
async fn delete_range(
    txn: &mut Transaction<'_, Postgres>,
    start: &str,
    end: Option<&str>,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(
        "DELETE FROM kv WHERE key COLLATE \"C\" >= $1 \
           AND ($2::TEXT IS NULL OR key COLLATE \"C\" < $2)",
    )
    .bind(start)
    .bind(end)
    .execute(&mut **txn)
    .await?;
    Ok(deleted.rows_affected())
}

/// The Raft log's entries after index `after` (`None`: from the start) and before
/// `before`, all of them: a missing one (purged) fails, since the data could not be
/// brought back to where this node applied.
async fn read_log_between(
    txn: &mut Transaction<'_, Postgres>,
    after: Option<u64>,
    before: u64,
) -> Result<Vec<Entry>, sqlx::Error> {
    let from = after.map_or(0, |a| a + 1);
    let rows = sqlx::query_scalar::<_, Vec<u8>>(
        "SELECT entry FROM raft_log WHERE log_index >= $1 AND log_index < $2 ORDER BY log_index",
    )
    .bind(super::to_i64(from))
    .bind(super::to_i64(before))
    .fetch_all(&mut **txn)
    .await?;
    let entries = rows
        .iter()
        .map(|bytes| decode::<Entry>(bytes))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    // With nothing applied yet, the log may start at 0 or 1.
    let start_ok = match after {
        Some(_) => entries.first().is_none_or(|e| e.index() == from),
        None => entries.first().is_none_or(|e| e.index() <= 1),
    };
    let consecutive = entries.windows(2).all(|w| w[1].index() == w[0].index() + 1);
    let end_ok = before <= from || entries.last().is_some_and(|e| e.index() + 1 == before);
    if start_ok && consecutive && end_ok {
        Ok(entries)
    } else {
        Err(lost_applies(format!(
            "PostgreSQL lost applies after index {after:?}, and the Raft log no longer \
             holds all entries up to {before}; rebuild this node from its peers"
        )))
    }
}

pub(super) async fn select_meta(
    txn: &mut Transaction<'_, Postgres>,
    name: &str,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar::<_, Vec<u8>>(Meta::StateMachine.select())
        .bind(name)
        .fetch_optional(&mut **txn)
        .await
}

/// Writes one metadata value; returns the bytes stored.
pub(super) async fn upsert_meta<T: serde::Serialize>(
    txn: &mut Transaction<'_, Postgres>,
    name: &str,
    value: &T,
) -> Result<Vec<u8>, sqlx::Error> {
    let bytes = serde_json::to_vec(value).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(Meta::StateMachine.upsert())
        .bind(name)
        .bind(bytes.as_slice())
        .execute(&mut **txn)
        .await?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_entries::{delete, put};

    #[test]
    fn a_batchs_changes_hold_each_keys_last_record() {
        let mut memory = Memory::default();
        let batch = [
            put(1, "a", "1"),
            delete(2, "a"),
            put(4, "a", "2"),
            put(7, "d", "x"),
            put(8, "d", "y"),
        ];
        for entry in &batch {
            commands::apply(&mut memory, entry.index(), command(entry).unwrap()).unwrap();
        }
        let rows = Rows::from(&memory);
        assert_eq!(rows.keys, ["a", "d"]);
        assert_eq!(rows.values, ["2", "y"]);
        // "a" was created again at 4; "d" created at 7, written again at 8.
        assert_eq!(
            (rows.create, rows.modified, rows.version),
            (vec![4, 7], vec![4, 8], vec![1, 2])
        );
        assert!(rows.gone.is_empty());
    }
}
