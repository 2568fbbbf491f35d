//! [`Data`] held in memory: the whole state (tests), or the records a backend read
//! before applying (PostgreSQL: what [`super::reads`] named), with the changes the
//! engine made, to be written back.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Bound;

use super::{Data, RangeRead};
use crate::types::{Lease, Record};

#[derive(Debug, Default)]
pub struct Memory {
    /// Every record the engine may read; a key not here does not exist.
    pub records: BTreeMap<String, Record>,
    /// Range reads answered ahead of time; others are answered from `records`.
    pub ranges: HashMap<RangeRead, Vec<(String, Record)>>,
    /// Every lease the engine may read.
    pub leases: BTreeMap<u64, Lease>,
    /// What changed, by key (`None`: deleted), for the backend to write.
    pub changes: BTreeMap<String, Option<Record>>,
    pub lease_changes: BTreeMap<u64, Option<Lease>>,
}

impl Data for Memory {
    fn get(&mut self, key: &str) -> io::Result<Option<Record>> {
        Ok(self.records.get(key).cloned())
    }

    fn set(&mut self, key: &str, record: Option<Record>) -> io::Result<()> {
        match &record {
            Some(record) => self.records.insert(key.to_owned(), record.clone()),
            None => self.records.remove(key),
        };
        self.changes.insert(key.to_owned(), record);
        Ok(())
    }

    fn range(&mut self, read: &RangeRead) -> io::Result<Vec<(String, Record)>> {
        if let Some(pairs) = self.ranges.get(read) {
            return Ok(pairs.clone());
        }
        let upper = read
            .end
            .as_deref()
            .map_or(Bound::Unbounded, Bound::Excluded);
        if read
            .end
            .as_deref()
            .is_some_and(|end| end <= read.start.as_str())
        {
            return Ok(Vec::new());
        }
        let mut pairs = Vec::new();
        let mut bytes = 0;
        for (key, record) in self
            .records
            .range::<str, _>((Bound::Included(read.start.as_str()), upper))
        {
            if pairs.len() >= read.limit || bytes >= read.max_bytes {
                break;
            }
            bytes += key.len() + record.value.len();
            pairs.push((key.clone(), record.clone()));
        }
        Ok(pairs)
    }

    fn delete_range(&mut self, start: &str, end: Option<&str>) -> io::Result<u64> {
        let keys: Vec<String> = self
            .records
            .keys()
            .filter(|k| k.as_str() >= start && end.is_none_or(|end| k.as_str() < end))
            .cloned()
            .collect();
        for key in &keys {
            self.set(key, None)?;
        }
        Ok(keys.len() as u64)
    }

    fn lease(&mut self, id: u64) -> io::Result<Option<Lease>> {
        Ok(self.leases.get(&id).copied())
    }

    fn set_lease(&mut self, id: u64, lease: Option<Lease>) -> io::Result<()> {
        match lease {
            Some(lease) => self.leases.insert(id, lease),
            None => self.leases.remove(&id),
        };
        self.lease_changes.insert(id, lease);
        Ok(())
    }

    fn lease_keys(&mut self, id: u64) -> io::Result<Vec<String>> {
        Ok(self
            .records
            .iter()
            .filter(|(_, r)| r.meta.lease == id)
            .map(|(k, _)| k.clone())
            .collect())
    }
}
