//! What a key holds besides its value, and what a lease is: the data model the backends
//! store and the API shows.

use serde::{Deserialize, Serialize};

/// A key's revisions (etcd's model). Revisions are Raft log indexes: cluster-wide,
/// increasing with every change. A key that does not exist has all of them 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMeta {
    /// The revision of the write that created the key (since it last did not exist).
    pub create_revision: u64,
    /// The revision of the key's last write.
    pub mod_revision: u64,
    /// Writes since creation: 1 when created, +1 with every put.
    pub version: u64,
    /// The lease the key is attached to; 0: none.
    pub lease: u64,
}

/// A key's value with its revisions, as a backend stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub value: String,
    pub meta: KeyMeta,
}

impl Record {
    /// Bytes of the fixed part of the binary encoding (four little-endian `u64`s).
    const HEADER: usize = 32;

    /// The compact binary form the embedded store keeps: the four numbers, then the
    /// value's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::HEADER + self.value.len());
        for n in [
            self.meta.create_revision,
            self.meta.mod_revision,
            self.meta.version,
            self.meta.lease,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(self.value.as_bytes());
        out
    }

    /// The revisions alone from the form [`Record::encode`] writes, without copying the
    /// value.
    pub fn decode_meta(bytes: &[u8]) -> std::io::Result<KeyMeta> {
        if bytes.len() < Self::HEADER {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "corrupt record: shorter than its header",
            ));
        }
        let n = |i: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(word)
        };
        Ok(KeyMeta {
            create_revision: n(0),
            mod_revision: n(1),
            version: n(2),
            lease: n(3),
        })
    }

    /// Reads the form [`Record::encode`] writes.
    pub fn decode(bytes: &[u8]) -> std::io::Result<Record> {
        let corrupt =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let meta = Self::decode_meta(bytes)?;
        let value = std::str::from_utf8(&bytes[Self::HEADER..])
            .map_err(|_| corrupt("corrupt record: the value is not UTF-8"))?;
        Ok(Record {
            value: value.to_owned(),
            meta,
        })
    }
}

/// A lease: keys attached to it are deleted when it is revoked or expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The revision of the entry that granted it.
    pub id: u64,
    pub ttl_seconds: u64,
    /// The revision of its last grant or keepalive. An expiry names it, so a keepalive
    /// committed after the leader decided to expire the lease wins.
    pub renewed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_short_ones_are_refused() {
        let record = Record {
            value: "ключ \"v\"".into(),
            meta: KeyMeta {
                create_revision: 3,
                mod_revision: u64::MAX,
                version: 2,
                lease: 0,
            },
        };
        assert_eq!(Record::decode(&record.encode()).unwrap(), record);
        assert_eq!(Record::decode_meta(&record.encode()).unwrap(), record.meta);
        assert!(Record::decode(&[0; 31]).is_err());
        let mut bad = record.encode();
        bad.push(0xff);
        assert!(Record::decode(&bad).is_err());
    }
}
