//! How an apply batch reaches PostgreSQL: the key-value commands folded into one
//! statement (the common case), or a transaction with the membership records and the
//! entries PostgreSQL lost, if it lost any; and the last applied id each expects to
//! find, so that nothing is ever built on lost applies.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;

use openraft::entry::RaftEntry;
use openraft::EntryPayload;
use sqlx::{Postgres, Transaction};

use super::{Db, Meta};
use crate::store::contract::meta::{LAST_APPLIED, MEMBERSHIP, RETIRED};
use crate::store::{decode, Command, CommandResult, Proposal};
use crate::types::typ::{Entry, LogId, StoredMembership};

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

/// The common batch, key-value commands only: one statement, so one round trip
/// (two with deletes, whose results need the keys that existed before). `None`
/// when the stored last applied id is not `applied`: the statement then changed
/// nothing.
pub(super) async fn in_one_statement(
    db: &Db,
    entries: &[Entry],
    applied: &Applied,
) -> Result<Option<(Vec<CommandResult>, Applied)>, sqlx::Error> {
    let fresh = |entry: &Entry| applied.fresh(entry);
    let Some(last) = entries.iter().rev().find(|e| fresh(e)).map(|e| e.log_id()) else {
        let (results, _) = fold_commands(entries, fresh, &HashSet::new());
        return Ok(Some((results, applied.clone())));
    };
    let existing = existing_keys(db.pool(), &deleted_keys(entries, fresh)).await?;
    let (results, after) = fold_commands(entries, fresh, &existing);
    let (put_keys, put_values, gone) = split_changes(after);
    let stored = serde_json::to_vec(&Some(last)).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    // The statement does not wait for its WAL flush (see the module's notes). Its
    // parts touch different keys: `after` holds one final value per key. Every
    // part runs only if the stored last applied id is the one this node expects
    // ($6; NULL: no row), so a database that lost applies, or a retry of an
    // attempt that did commit, changes nothing here.
    let written = sqlx::query(
        "WITH async AS (SELECT set_config('synchronous_commit', 'off', true)), \
         ok AS (SELECT 1 WHERE (SELECT value FROM sm_meta WHERE name = $4) \
                               IS NOT DISTINCT FROM $6::BYTEA), \
         put AS (INSERT INTO kv (key, value) \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[]) WHERE EXISTS (SELECT 1 FROM ok) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value), \
         gone AS (DELETE FROM kv WHERE key = ANY($3::TEXT[]) AND EXISTS (SELECT 1 FROM ok)) \
         INSERT INTO sm_meta (name, value) SELECT $4, $5 FROM async, ok \
         ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
    )
    .bind(&put_keys)
    .bind(&put_values)
    .bind(&gone)
    .bind(LAST_APPLIED)
    .bind(stored.as_slice())
    .bind(applied.stored.as_deref())
    .execute(db.pool())
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
    // A range delete must see the point writes before it and hide none after it: the
    // entries are applied in runs that each end with one.
    let mut results = Vec::with_capacity(entries.len());
    for run in entries.split_inclusive(is_range_delete) {
        let (points, range_delete) = match run.split_last() {
            Some((last, points)) if is_range_delete(last) => (points, Some(last)),
            _ => (run, None),
        };
        results.extend(apply_points(&mut txn, points, fresh).await?);
        if let Some(entry) = range_delete {
            let count = match &entry.payload {
                EntryPayload::Normal(Proposal {
                    command: Command::DeleteRange { start, end },
                    ..
                }) if fresh(entry) => delete_range(&mut txn, start, end.as_deref()).await?,
                // Applied before a crash: its count was answered then, or never.
                _ => 0,
            };
            results.push(CommandResult::DeletedRange { count });
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

/// Whether `entry` deletes a range of keys.
pub(super) fn is_range_delete(entry: &Entry) -> bool {
    matches!(
        entry.payload,
        EntryPayload::Normal(Proposal {
            command: Command::DeleteRange { .. },
            ..
        })
    )
}

/// Applies a run of entries without range deletes in `txn`: the key-value commands
/// are folded in memory, in log order, into the final value of each key they touch;
/// the run then costs one upsert and one delete whatever its size. Only a delete needs
/// the value before the run (to say whether the key existed), so only deleted keys are
/// read first. Returns one result per entry.
async fn apply_points(
    txn: &mut Transaction<'_, Postgres>,
    entries: &[Entry],
    fresh: impl Fn(&Entry) -> bool + Copy,
) -> Result<Vec<CommandResult>, sqlx::Error> {
    let existing = existing_keys(&mut **txn, &deleted_keys(entries, fresh)).await?;
    let (results, after) = fold_commands(entries, fresh, &existing);
    let (put_keys, put_values, gone) = split_changes(after);
    if !put_keys.is_empty() {
        sqlx::query(
            "INSERT INTO kv (key, value) SELECT * FROM UNNEST($1::text[], $2::text[]) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        )
        .bind(&put_keys)
        .bind(&put_values)
        .execute(&mut **txn)
        .await?;
    }
    if !gone.is_empty() {
        sqlx::query("DELETE FROM kv WHERE key = ANY($1)")
            .bind(&gone)
            .execute(&mut **txn)
            .await?;
    }
    Ok(results)
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

/// Which of `keys` exist now (no query when there are none).
async fn existing_keys<'e, E>(executor: E, keys: &[&str]) -> Result<HashSet<String>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let found = sqlx::query_scalar::<_, String>("SELECT key FROM kv WHERE key = ANY($1)")
        .bind(keys)
        .fetch_all(executor)
        .await?;
    Ok(found.into_iter().collect())
}

/// The keys the batch's fresh entries delete.
fn deleted_keys(entries: &[Entry], fresh: impl Fn(&Entry) -> bool) -> Vec<&str> {
    entries
        .iter()
        .filter(|e| fresh(e))
        .filter_map(|e| match &e.payload {
            EntryPayload::Normal(Proposal {
                command: Command::Delete { key },
                ..
            }) => Some(key.as_str()),
            _ => None,
        })
        .collect()
}

/// A batch's final values, split into the keys to upsert with their values, and the
/// keys to delete.
type Changes<'a> = (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>);

fn split_changes<'a>(after: HashMap<&'a str, Option<&'a str>>) -> Changes<'a> {
    let (mut put_keys, mut put_values, mut gone) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in after {
        match value {
            Some(value) => {
                put_keys.push(key);
                put_values.push(value);
            }
            None => gone.push(key),
        }
    }
    (put_keys, put_values, gone)
}

/// The key-value commands of an apply batch, in log order: each entry's result, and
/// the value of every key they touch after the batch (`None`: deleted). `fresh` says
/// which entries still need applying (after a crash, a batch may repeat some);
/// `existing`: which of the deleted keys existed before the batch.
fn fold_commands<'a>(
    entries: &'a [Entry],
    fresh: impl Fn(&Entry) -> bool,
    existing: &HashSet<String>,
) -> (Vec<CommandResult>, HashMap<&'a str, Option<&'a str>>) {
    let mut after: HashMap<&str, Option<&str>> = HashMap::new();
    let results = entries
        .iter()
        .map(|entry| match &entry.payload {
            EntryPayload::Normal(Proposal { command, .. }) => match (command, fresh(entry)) {
                (Command::Put { .. }, false) => CommandResult::Stored,
                (Command::Delete { .. }, false) => CommandResult::Deleted { existed: true },
                (Command::Put { key, value }, true) => {
                    after.insert(key, Some(value));
                    CommandResult::Stored
                }
                (Command::Delete { key }, true) => {
                    let existed = match after.get(key.as_str()) {
                        Some(value) => value.is_some(),
                        None => existing.contains(key),
                    };
                    after.insert(key, None);
                    CommandResult::Deleted { existed }
                }
                // The callers apply range deletes themselves, between folded runs
                // (`in_transaction`); none reaches a fold.
                (Command::DeleteRange { .. }, _) => CommandResult::DeletedRange { count: 0 },
            },
            EntryPayload::Blank | EntryPayload::Membership(_) => CommandResult::None,
        })
        .collect();
    (results, after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_entries::{delete, put};

    #[test]
    fn a_batch_folds_into_each_keys_last_value_in_log_order() {
        let batch = vec![
            put(1, "a", "1"),
            delete(2, "a"),
            delete(3, "a"),
            put(4, "a", "2"),
            delete(5, "b"),
            delete(6, "c"),
            put(7, "d", "x"),
            put(8, "d", "y"),
        ];
        let existing: HashSet<String> = ["b".to_string()].into();
        let (results, after) = fold_commands(&batch, |_| true, &existing);
        assert_eq!(
            results,
            vec![
                CommandResult::Stored,
                CommandResult::Deleted { existed: true },
                CommandResult::Deleted { existed: false },
                CommandResult::Stored,
                CommandResult::Deleted { existed: true },
                CommandResult::Deleted { existed: false },
                CommandResult::Stored,
                CommandResult::Stored,
            ]
        );
        let expected: HashMap<&str, Option<&str>> =
            [("a", Some("2")), ("b", None), ("c", None), ("d", Some("y"))].into();
        assert_eq!(after, expected);
    }

    #[test]
    fn entries_applied_before_a_crash_change_nothing() {
        let batch = vec![put(1, "a", "old"), delete(2, "b"), put(3, "a", "new")];
        let (results, after) = fold_commands(&batch, |e| e.index() > 2, &HashSet::new());
        assert_eq!(results[1], CommandResult::Deleted { existed: true });
        let expected: HashMap<&str, Option<&str>> = [("a", Some("new"))].into();
        assert_eq!(after, expected);
    }
}
