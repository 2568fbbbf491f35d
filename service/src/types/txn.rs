//! A transaction as it travels in the Raft log (etcd's model): comparisons on keys,
//! then one of two lists of operations, applied atomically as one entry at one
//! revision.

use serde::{Deserialize, Serialize};

use super::data::{KeyMeta, Record};

/// A transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// All must hold for `success` to run; else `failure` runs.
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// Bytes of client data it carries.
    pub fn payload_bytes(&self) -> usize {
        let compares: usize = self
            .compare
            .iter()
            .map(|c| {
                c.key.len()
                    + match &c.operand {
                        Operand::Value(v) => v.len(),
                        _ => 8,
                    }
            })
            .sum();
        let ops = |ops: &[TxnOp]| ops.iter().map(TxnOp::payload_bytes).sum::<usize>();
        compares + ops(&self.success) + ops(&self.failure)
    }

    /// Whether an operation attaches a key to a lease.
    pub fn attaches_leases(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .any(|op| matches!(op, TxnOp::Put { lease: Some(_), .. }))
    }

    /// Whether an operation reads a range.
    pub fn reads_ranges(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .any(|op| matches!(op, TxnOp::Range { .. }))
    }

    /// Every key a comparison or a point operation names.
    pub fn point_keys(&self) -> impl Iterator<Item = &str> {
        let ops = self
            .success
            .iter()
            .chain(&self.failure)
            .filter_map(|op| match op {
                TxnOp::Put { key, .. } | TxnOp::Get { key } | TxnOp::Delete { key } => {
                    Some(key.as_str())
                }
                TxnOp::Range { .. } => None,
            });
        self.compare.iter().map(|c| c.key.as_str()).chain(ops)
    }
}

/// One comparison: `target` of `key` `op` `operand`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    pub op: CompareOp,
    pub operand: Operand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// What a comparison looks at, with the value it compares against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operand {
    /// The value; a missing key has none, and no comparison of its value holds.
    Value(String),
    Version(u64),
    CreateRevision(u64),
    ModRevision(u64),
    Lease(u64),
}

impl Compare {
    /// Whether the comparison holds for the key as it is (`None`: absent).
    pub fn holds(&self, record: Option<&Record>) -> bool {
        let meta = record.map(|r| r.meta).unwrap_or_default();
        let ordering = match &self.operand {
            Operand::Value(expected) => match record {
                Some(record) => record.value.as_str().cmp(expected.as_str()),
                None => return false,
            },
            Operand::Version(n) => meta.version.cmp(n),
            Operand::CreateRevision(n) => meta.create_revision.cmp(n),
            Operand::ModRevision(n) => meta.mod_revision.cmp(n),
            Operand::Lease(n) => meta.lease.cmp(n),
        };
        match self.op {
            CompareOp::Equal => ordering.is_eq(),
            CompareOp::NotEqual => ordering.is_ne(),
            CompareOp::Less => ordering.is_lt(),
            CompareOp::Greater => ordering.is_gt(),
        }
    }
}

/// One operation of a transaction's branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put {
        key: String,
        value: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<u64>,
    },
    Get {
        key: String,
    },
    Delete {
        key: String,
    },
    /// Reads up to `limit` pairs with keys in `[start, end)` (`end: None`: no bound).
    Range {
        start: String,
        end: Option<String>,
        limit: usize,
    },
}

impl TxnOp {
    fn payload_bytes(&self) -> usize {
        match self {
            TxnOp::Put { key, value, .. } => key.len() + value.len(),
            TxnOp::Get { key } | TxnOp::Delete { key } => key.len(),
            TxnOp::Range { start, end, .. } => start.len() + end.as_ref().map_or(0, String::len),
        }
    }
}

/// What one operation of the branch that ran did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Put {
        key: String,
        meta: KeyMeta,
    },
    /// `None`: the key does not exist.
    Get {
        key: String,
        record: Option<Record>,
    },
    Delete {
        key: String,
        existed: bool,
    },
    Range {
        pairs: Vec<(String, Record)>,
        more: bool,
    },
}
