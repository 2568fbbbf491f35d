//! What each command does to the data, written once for every backend: a backend
//! gives a view of its data ([`Data`]) and [`apply`] decides, at the command's place in
//! the log, its outcome (a failed condition, a lease that is gone, a transaction's
//! branch), the keys' new revisions, and what changes.
//!
//! A backend either applies through a view of its store that sees its own writes
//! (redb's write transaction, the writes waiting in memory), or reads first what a
//! command needs ([`Reads`]) and hands the engine those answers (PostgreSQL).

use std::io;

use crate::types::{
    Command, CommandResult, Condition, KeyMeta, Lease, OpResult, Operand, Record, Txn, TxnOp,
};

/// The most bytes of keys and values one range read inside a transaction returns; a
/// range that reaches it ends there, with `more` set.
pub const TXN_RANGE_MAX_BYTES: usize = 4 * 1024 * 1024;

/// A backend's data as the engine reads and changes it. Reads see the writes made
/// through the same view before them.
pub trait Data {
    fn get(&mut self, key: &str) -> io::Result<Option<Record>>;
    /// The revisions of `key` alone (a backend may skip copying the value).
    fn meta(&mut self, key: &str) -> io::Result<Option<KeyMeta>> {
        Ok(self.get(key)?.map(|r| r.meta))
    }
    /// Stores `record` under `key` (`None`: deletes it). A record with a lease attaches
    /// the key to it.
    fn set(&mut self, key: &str, record: Option<Record>) -> io::Result<()>;
    /// Up to `limit` pairs in `[start, end)` in key order, ending early with the pair
    /// that brings the keys and values to `max_bytes`.
    fn range(&mut self, read: &RangeRead) -> io::Result<Vec<(String, Record)>>;
    /// Deletes every key in `[start, end)`; returns how many there were.
    fn delete_range(&mut self, start: &str, end: Option<&str>) -> io::Result<u64>;
    fn lease(&mut self, id: u64) -> io::Result<Option<Lease>>;
    /// Stores or (`None`) removes a lease, with its record of attached keys.
    fn set_lease(&mut self, id: u64, lease: Option<Lease>) -> io::Result<()>;
    /// The keys attached to lease `id`. May name keys attached once and since
    /// detached or deleted: the engine checks each key's own record.
    fn lease_keys(&mut self, id: u64) -> io::Result<Vec<String>>;
}

/// A range read as a transaction asks it of [`Data::range`] (one pair more than its
/// limit, to tell whether there are more).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RangeRead {
    pub start: String,
    pub end: Option<String>,
    pub limit: usize,
    pub max_bytes: usize,
}

/// What applying a command reads, for a backend that reads before it applies.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reads {
    /// Keys whose revisions are read.
    pub keys: Vec<String>,
    /// Keys whose values are read too (a transaction's gets and value comparisons).
    pub values: Vec<String>,
    pub ranges: Vec<RangeRead>,
    /// Leases whose records are read.
    pub leases: Vec<u64>,
    /// Leases whose attached keys (with their records) are read too.
    pub lease_keys: Vec<u64>,
}

/// What [`apply`] of `command` may read. Range deletes are the backend's own.
pub fn reads(command: &Command) -> Reads {
    let mut reads = Reads::default();
    match command {
        Command::Put { key, lease, .. } => {
            reads.keys.push(key.clone());
            reads.leases.extend(lease);
        }
        Command::Delete { key, .. } => reads.keys.push(key.clone()),
        Command::DeleteRange { .. } | Command::LeaseGrant { .. } => {}
        Command::Txn(txn) => {
            reads.keys.extend(txn.point_keys().map(str::to_owned));
            for compare in &txn.compare {
                if matches!(compare.operand, Operand::Value(_)) {
                    reads.values.push(compare.key.clone());
                }
            }
            for op in txn.success.iter().chain(&txn.failure) {
                match op {
                    TxnOp::Get { key } => reads.values.push(key.clone()),
                    TxnOp::Put {
                        lease: Some(id), ..
                    } => reads.leases.push(*id),
                    TxnOp::Range { start, end, limit } => {
                        reads.ranges.push(txn_range(start, end.as_deref(), *limit))
                    }
                    _ => {}
                }
            }
        }
        Command::LeaseKeepAlive { id } => reads.leases.push(*id),
        Command::LeaseRevoke { id } => {
            reads.leases.push(*id);
            reads.lease_keys.push(*id);
        }
        Command::LeaseExpire { leases } => {
            reads.leases.extend(leases.iter().map(|(id, _)| *id));
            reads.lease_keys.extend(leases.iter().map(|(id, _)| *id));
        }
    }
    reads
}

fn txn_range(start: &str, end: Option<&str>, limit: usize) -> RangeRead {
    RangeRead {
        start: start.to_owned(),
        end: end.map(str::to_owned),
        limit: limit.saturating_add(1),
        max_bytes: TXN_RANGE_MAX_BYTES,
    }
}

/// Applies `command`, the entry at `index` (its revision), to `data`.
pub fn apply(data: &mut impl Data, index: u64, command: &Command) -> io::Result<CommandResult> {
    Ok(match command {
        Command::Put {
            key,
            value,
            lease,
            ttl_seconds,
            condition,
        } => {
            let current = data.meta(key)?;
            if let Some(failed) = unmet(condition, current) {
                return Ok(failed);
            }
            let mut granted = None;
            let lease = match (ttl_seconds, lease) {
                (Some(ttl_seconds), _) => {
                    let lease = Lease {
                        id: index,
                        ttl_seconds: *ttl_seconds,
                        renewed: index,
                    };
                    data.set_lease(index, Some(lease))?;
                    granted = Some(lease);
                    index
                }
                (None, Some(id)) => match data.lease(*id)? {
                    Some(_) => *id,
                    None => return Ok(CommandResult::LeaseNotFound { id: *id }),
                },
                (None, None) => 0,
            };
            let meta = put(data, index, key, value, current, lease)?;
            CommandResult::Put { meta, granted }
        }
        Command::Delete { key, condition } => {
            let current = data.meta(key)?;
            if let Some(failed) = unmet(condition, current) {
                return Ok(failed);
            }
            if current.is_some() {
                data.set(key, None)?;
            }
            CommandResult::Deleted {
                existed: current.is_some(),
                revision: index,
            }
        }
        Command::DeleteRange { start, end } => CommandResult::DeletedRange {
            count: data.delete_range(start, end.as_deref())?,
        },
        Command::Txn(txn) => apply_txn(data, index, txn)?,
        Command::LeaseGrant { ttl_seconds } => {
            let lease = Lease {
                id: index,
                ttl_seconds: *ttl_seconds,
                renewed: index,
            };
            data.set_lease(index, Some(lease))?;
            CommandResult::Lease { lease }
        }
        Command::LeaseKeepAlive { id } => match data.lease(*id)? {
            Some(lease) => {
                let lease = Lease {
                    renewed: index,
                    ..lease
                };
                data.set_lease(*id, Some(lease))?;
                CommandResult::Lease { lease }
            }
            None => CommandResult::LeaseNotFound { id: *id },
        },
        Command::LeaseRevoke { id } => match data.lease(*id)? {
            Some(_) => CommandResult::LeaseRevoked {
                id: *id,
                deleted: revoke(data, *id)?,
            },
            None => CommandResult::LeaseNotFound { id: *id },
        },
        Command::LeaseExpire { leases } => {
            let (mut ids, mut deleted) = (Vec::new(), 0);
            for (id, renewed) in leases {
                // Renewed since the leader decided: the keepalive won.
                if data.lease(*id)?.is_some_and(|l| l.renewed == *renewed) {
                    deleted += revoke(data, *id)?;
                    ids.push(*id);
                }
            }
            CommandResult::LeasesExpired { ids, deleted }
        }
    })
}

/// The answer to a write whose condition does not hold, if it does not.
fn unmet(condition: &Option<Condition>, current: Option<KeyMeta>) -> Option<CommandResult> {
    match condition {
        Some(condition) if !condition.holds(current.as_ref()) => {
            Some(CommandResult::PreconditionFailed { current })
        }
        _ => None,
    }
}

/// Stores `value` under `key` at revision `index`; returns its revisions.
fn put(
    data: &mut impl Data,
    index: u64,
    key: &str,
    value: &str,
    current: Option<KeyMeta>,
    lease: u64,
) -> io::Result<KeyMeta> {
    let meta = match current {
        Some(current) => KeyMeta {
            create_revision: current.create_revision,
            mod_revision: index,
            version: current.version + 1,
            lease,
        },
        None => KeyMeta {
            create_revision: index,
            mod_revision: index,
            version: 1,
            lease,
        },
    };
    data.set(
        key,
        Some(Record {
            value: value.to_owned(),
            meta,
        }),
    )?;
    Ok(meta)
}

/// Removes lease `id` and the keys still attached to it; returns their count.
fn revoke(data: &mut impl Data, id: u64) -> io::Result<u64> {
    let mut deleted = 0;
    for key in data.lease_keys(id)? {
        if data.meta(&key)?.is_some_and(|m| m.lease == id) {
            data.set(&key, None)?;
            deleted += 1;
        }
    }
    data.set_lease(id, None)?;
    Ok(deleted)
}

fn apply_txn(data: &mut impl Data, index: u64, txn: &Txn) -> io::Result<CommandResult> {
    let mut succeeded = true;
    for compare in &txn.compare {
        let record = match compare.operand {
            Operand::Value(_) => data.get(&compare.key)?,
            _ => data.meta(&compare.key)?.map(|meta| Record {
                value: String::new(),
                meta,
            }),
        };
        if !compare.holds(record.as_ref()) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    // All or nothing: a put naming a lease that is gone fails the whole transaction
    // before any operation runs.
    for op in ops {
        if let TxnOp::Put {
            lease: Some(id), ..
        } = op
        {
            if data.lease(*id)?.is_none() {
                return Ok(CommandResult::LeaseNotFound { id: *id });
            }
        }
    }
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        results.push(match op {
            TxnOp::Put { key, value, lease } => {
                let current = data.meta(key)?;
                let meta = put(data, index, key, value, current, lease.unwrap_or(0))?;
                OpResult::Put {
                    key: key.clone(),
                    meta,
                }
            }
            TxnOp::Get { key } => OpResult::Get {
                key: key.clone(),
                record: data.get(key)?,
            },
            TxnOp::Delete { key } => {
                let existed = data.meta(key)?.is_some();
                if existed {
                    data.set(key, None)?;
                }
                OpResult::Delete {
                    key: key.clone(),
                    existed,
                }
            }
            TxnOp::Range { start, end, limit } => {
                let mut pairs = data.range(&txn_range(start, end.as_deref(), *limit))?;
                let bytes: usize = pairs.iter().map(|(k, r)| k.len() + r.value.len()).sum();
                // Ended by its byte bound: there may be more after the last key.
                let more = pairs.len() > *limit || bytes >= TXN_RANGE_MAX_BYTES;
                pairs.truncate(*limit);
                OpResult::Range { pairs, more }
            }
        });
    }
    Ok(CommandResult::Txn {
        succeeded,
        results,
        revision: index,
    })
}

mod memory;
pub use memory::Memory;

#[cfg(test)]
mod tests;
