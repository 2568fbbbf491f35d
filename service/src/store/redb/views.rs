//! The state machine's data as the command engine (`store::commands`) sees it: the
//! writes waiting in memory over `state.redb` for the common point writes, or the
//! database's write transaction for everything else.

use std::io;
use std::ops::Bound;

use redb::ReadableTable;

use super::pending::Pending;
use super::{redb_err, Db, KV, LEASES, LEASE_KEYS};
use crate::store::commands::{Data, RangeRead};
use crate::store::{decode, encode};
use crate::types::{KeyMeta, Lease, Record};

/// Point reads and writes of keys, applied to the pending writes in memory; the
/// database is read (from its cache) for keys with nothing pending. Commands that touch
/// leases or ranges never come here (`Command::touches_leases_or_ranges`).
pub(super) struct InMemory<'a> {
    pub(super) pending: &'a mut Pending,
    pub(super) db: &'a Db,
    /// Opened at the first read that needs the database.
    pub(super) table: Option<redb::ReadOnlyTable<&'static str, &'static [u8]>>,
}

impl InMemory<'_> {
    fn stored(&mut self, key: &str) -> io::Result<Option<redb::AccessGuard<'_, &'static [u8]>>> {
        if self.table.is_none() {
            let txn = self.db.begin_read()?;
            self.table = Some(txn.open_table(KV).map_err(redb_err)?);
        }
        let table = self.table.as_ref().expect("opened above");
        table.get(key).map_err(redb_err)
    }
}

fn not_here(what: &str) -> io::Error {
    io::Error::other(format!(
        "{what} reached the in-memory apply; it is applied in the database's transaction"
    ))
}

impl Data for InMemory<'_> {
    fn get(&mut self, key: &str) -> io::Result<Option<Record>> {
        if let Some(record) = self.pending.lookup(key) {
            return Ok(record.cloned());
        }
        self.stored(key)?
            .map(|v| Record::decode(v.value()))
            .transpose()
    }

    fn meta(&mut self, key: &str) -> io::Result<Option<KeyMeta>> {
        if let Some(record) = self.pending.lookup(key) {
            return Ok(record.map(|r| r.meta));
        }
        self.stored(key)?
            .map(|v| Record::decode_meta(v.value()))
            .transpose()
    }

    fn set(&mut self, key: &str, record: Option<Record>) -> io::Result<()> {
        if record.as_ref().is_some_and(|r| r.meta.lease != 0) {
            return Err(not_here("a key attached to a lease"));
        }
        self.pending.active.insert(key.to_owned(), record);
        Ok(())
    }

    fn range(&mut self, _: &RangeRead) -> io::Result<Vec<(String, Record)>> {
        Err(not_here("a range read"))
    }

    fn delete_range(&mut self, _: &str, _: Option<&str>) -> io::Result<u64> {
        Err(not_here("a range delete"))
    }

    fn lease(&mut self, _: u64) -> io::Result<Option<Lease>> {
        Err(not_here("a lease"))
    }

    fn set_lease(&mut self, _: u64, _: Option<Lease>) -> io::Result<()> {
        Err(not_here("a lease"))
    }

    fn lease_keys(&mut self, _: u64) -> io::Result<Vec<String>> {
        Err(not_here("a lease"))
    }
}

/// The state machine's tables inside one write transaction, which sees its own writes.
pub(super) struct InTransaction<'t> {
    pub(super) kv: redb::Table<'t, &'static str, &'static [u8]>,
    pub(super) leases: redb::Table<'t, u64, &'static [u8]>,
    pub(super) lease_keys: redb::Table<'t, (u64, &'static str), ()>,
}

impl<'t> InTransaction<'t> {
    pub(super) fn open(txn: &'t redb::WriteTransaction) -> io::Result<Self> {
        Ok(Self {
            kv: txn.open_table(KV).map_err(redb_err)?,
            leases: txn.open_table(LEASES).map_err(redb_err)?,
            lease_keys: txn.open_table(LEASE_KEYS).map_err(redb_err)?,
        })
    }
}

impl Data for InTransaction<'_> {
    fn get(&mut self, key: &str) -> io::Result<Option<Record>> {
        let stored = self.kv.get(key).map_err(redb_err)?;
        stored.map(|v| Record::decode(v.value())).transpose()
    }

    fn meta(&mut self, key: &str) -> io::Result<Option<KeyMeta>> {
        let stored = self.kv.get(key).map_err(redb_err)?;
        stored.map(|v| Record::decode_meta(v.value())).transpose()
    }

    fn set(&mut self, key: &str, record: Option<Record>) -> io::Result<()> {
        match record {
            Some(record) => {
                if record.meta.lease != 0 {
                    self.lease_keys
                        .insert((record.meta.lease, key), ())
                        .map_err(redb_err)?;
                }
                self.kv
                    .insert(key, record.encode().as_slice())
                    .map_err(redb_err)?;
            }
            None => {
                self.kv.remove(key).map_err(redb_err)?;
            }
        }
        Ok(())
    }

    fn range(&mut self, read: &RangeRead) -> io::Result<Vec<(String, Record)>> {
        let mut pairs = Vec::new();
        if read
            .end
            .as_deref()
            .is_some_and(|end| end <= read.start.as_str())
        {
            return Ok(pairs);
        }
        let upper = read
            .end
            .as_deref()
            .map_or(Bound::Unbounded, Bound::Excluded);
        let mut bytes = 0;
        for pair in self
            .kv
            .range::<&str>((Bound::Included(read.start.as_str()), upper))
            .map_err(redb_err)?
        {
            if pairs.len() >= read.limit || bytes >= read.max_bytes {
                break;
            }
            let (key, value) = pair.map_err(redb_err)?;
            let record = Record::decode(value.value())?;
            bytes += key.value().len() + record.value.len();
            pairs.push((key.value().to_owned(), record));
        }
        Ok(pairs)
    }

    fn delete_range(&mut self, start: &str, end: Option<&str>) -> io::Result<u64> {
        let mut count = 0u64;
        let remove_each = |_: &str, _: &[u8]| {
            count += 1;
            false
        };
        match end {
            Some(end) if end <= start => {}
            Some(end) => self
                .kv
                .retain_in::<&str, _>(start..end, remove_each)
                .map_err(redb_err)?,
            None => self
                .kv
                .retain_in::<&str, _>(start.., remove_each)
                .map_err(redb_err)?,
        }
        Ok(count)
    }

    fn lease(&mut self, id: u64) -> io::Result<Option<Lease>> {
        let stored = self.leases.get(id).map_err(redb_err)?;
        stored.map(|v| decode(v.value())).transpose()
    }

    fn set_lease(&mut self, id: u64, lease: Option<Lease>) -> io::Result<()> {
        match lease {
            Some(lease) => {
                self.leases
                    .insert(id, encode(&lease)?.as_slice())
                    .map_err(redb_err)?;
            }
            None => {
                self.leases.remove(id).map_err(redb_err)?;
                self.lease_keys
                    .retain_in::<(u64, &str), _>((id, "")..(id + 1, ""), |_, _| false)
                    .map_err(redb_err)?;
            }
        }
        Ok(())
    }

    fn lease_keys(&mut self, id: u64) -> io::Result<Vec<String>> {
        attached_keys(&self.lease_keys, id, usize::MAX)
    }
}

/// Up to `limit` keys the index names for lease `id`, in key order.
pub(super) fn attached_keys(
    table: &impl ReadableTable<(u64, &'static str), ()>,
    id: u64,
    limit: usize,
) -> io::Result<Vec<String>> {
    let mut keys = Vec::new();
    for row in table
        .range::<(u64, &str)>((id, "")..(id + 1, ""))
        .map_err(redb_err)?
    {
        if keys.len() >= limit {
            break;
        }
        let (row, _) = row.map_err(redb_err)?;
        keys.push(row.value().1.to_owned());
    }
    Ok(keys)
}

/// Every lease in the database.
pub(super) fn all_leases(db: &Db) -> io::Result<Vec<Lease>> {
    let txn = db.begin_read()?;
    let table = txn.open_table(LEASES).map_err(redb_err)?;
    let mut leases = Vec::new();
    for row in table.iter().map_err(redb_err)? {
        let (_, value) = row.map_err(redb_err)?;
        leases.push(decode(value.value())?);
    }
    Ok(leases)
}
