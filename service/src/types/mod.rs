//! The ground floor: the openraft type configuration and the types every layer shares
//! (what a client command is, how it travels in the Raft log, what applying it returns,
//! where a member is reached). It imports nothing else of this crate, so the storage
//! backends build on it without depending on the Raft wiring above them.

use serde::{Deserialize, Serialize};

mod data;
mod txn;

pub use data::{KeyMeta, Lease, Record};
pub use txn::{Compare, CompareOp, OpResult, Operand, Txn, TxnOp};

/// A change to the key-value data, replicated through the Raft log. Every node applies
/// it to the same state and decides its outcome (a condition, a lease that is gone)
/// the same way, at its place in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        key: String,
        value: String,
        /// Attach the key to this lease (it must exist when the put is applied).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<u64>,
        /// Grant the key a lease of its own with this TTL, in the same entry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_seconds: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        condition: Option<Condition>,
    },
    Delete {
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        condition: Option<Condition>,
    },
    /// Deletes every key in `[start, end)` (`end: None`: no upper bound), in one log
    /// entry, so that no node ever shows the range half deleted.
    DeleteRange {
        start: String,
        end: Option<String>,
    },
    Txn(Txn),
    /// Grants a lease; its id is this entry's index.
    LeaseGrant {
        ttl_seconds: u64,
    },
    LeaseKeepAlive {
        id: u64,
    },
    /// Revokes a lease and deletes the keys attached to it.
    LeaseRevoke {
        id: u64,
    },
    /// The leader found these leases past their deadlines: each `(id, renewed)` is
    /// revoked unless it was renewed since (its `renewed` revision moved on).
    LeaseExpire {
        leases: Vec<(u64, u64)>,
    },
}

/// What a conditional write requires of its key when it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// The key exists with this mod_revision (`If-Match: "<rev>"`).
    ModRevision(u64),
    /// The key exists (`If-Match: *`).
    Exists,
    /// The key does not exist (`If-None-Match: *`).
    Absent,
}

impl Condition {
    /// Whether the key as it is (`None`: absent) meets the condition.
    pub fn holds(&self, current: Option<&KeyMeta>) -> bool {
        match (self, current) {
            (Condition::ModRevision(rev), Some(meta)) => meta.mod_revision == *rev,
            (Condition::Exists, Some(_)) | (Condition::Absent, None) => true,
            _ => false,
        }
    }
}

impl Command {
    /// A plain put: no lease, no condition.
    pub fn put(key: impl Into<String>, value: impl Into<String>) -> Command {
        Command::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
            ttl_seconds: None,
            condition: None,
        }
    }

    /// A plain delete.
    pub fn delete(key: impl Into<String>) -> Command {
        Command::Delete {
            key: key.into(),
            condition: None,
        }
    }

    /// The bytes of client data the command carries (keys and values): what bounds its
    /// share of replication messages and of the leader's bytes in flight.
    pub fn payload_bytes(&self) -> usize {
        match self {
            Command::Put { key, value, .. } => key.len() + value.len(),
            Command::Delete { key, .. } => key.len(),
            Command::DeleteRange { start, end } => {
                start.len() + end.as_ref().map_or(0, String::len)
            }
            Command::Txn(txn) => txn.payload_bytes(),
            Command::LeaseExpire { leases } => leases.len() * 16,
            Command::LeaseGrant { .. }
            | Command::LeaseKeepAlive { .. }
            | Command::LeaseRevoke { .. } => 8,
        }
    }

    /// Whether applying it reads or writes leases, or more than single keys: such
    /// commands are applied straight to the store, never folded in memory.
    pub fn touches_leases_or_ranges(&self) -> bool {
        match self {
            Command::Put {
                lease, ttl_seconds, ..
            } => lease.is_some() || ttl_seconds.is_some(),
            Command::Delete { .. } => false,
            Command::Txn(txn) => txn.attaches_leases() || txn.reads_ranges(),
            Command::DeleteRange { .. }
            | Command::LeaseGrant { .. }
            | Command::LeaseKeepAlive { .. }
            | Command::LeaseRevoke { .. }
            | Command::LeaseExpire { .. } => true,
        }
    }
}

impl std::fmt::Display for Command {
    // Shown in openraft's logs: names the key, never the value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Put { key, value, .. } => {
                write!(f, "put {key:?} ({} bytes)", value.len())
            }
            Command::Delete { key, .. } => write!(f, "delete {key:?}"),
            Command::DeleteRange {
                start,
                end: Some(end),
            } => {
                write!(f, "delete range [{start:?}, {end:?})")
            }
            Command::DeleteRange { start, end: None } => write!(f, "delete range [{start:?}, ..)"),
            Command::Txn(txn) => write!(
                f,
                "txn ({} compares, {}/{} ops)",
                txn.compare.len(),
                txn.success.len(),
                txn.failure.len()
            ),
            Command::LeaseGrant { ttl_seconds } => write!(f, "lease grant ttl {ttl_seconds}s"),
            Command::LeaseKeepAlive { id } => write!(f, "lease keepalive {id}"),
            Command::LeaseRevoke { id } => write!(f, "lease revoke {id}"),
            Command::LeaseExpire { leases } => write!(f, "lease expire ({} leases)", leases.len()),
        }
    }
}

/// A [`Command`] as it travels in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub command: Command,
    /// W3C `traceparent` of the span that proposed the command. Storage work happens in
    /// openraft's own tasks, on every node; this links its spans to the request's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.command, f)
    }
}

/// What applying a [`Command`] did, returned to the client that proposed it.
///
/// Outcomes are decided by the state machine, at the command's place in the log (a
/// delete's 404, a failed condition, a lease that expired first), so they are as
/// linearizable as the write itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CommandResult {
    /// Blank and membership entries carry no client command.
    #[default]
    None,
    /// A put: the key's revisions after it; `granted`: the lease it got of its own.
    Put {
        meta: KeyMeta,
        granted: Option<Lease>,
    },
    /// A delete; `revision`: its own (the entry's index).
    Deleted { existed: bool, revision: u64 },
    /// A range delete: how many keys it removed.
    DeletedRange { count: u64 },
    /// A conditional write whose condition did not hold; nothing changed. `current`:
    /// the key's revisions (`None`: absent).
    PreconditionFailed { current: Option<KeyMeta> },
    /// A put named a lease, or a keepalive or revoke one, that does not exist.
    LeaseNotFound { id: u64 },
    /// A transaction: which branch ran, each operation's result, and its revision.
    Txn {
        succeeded: bool,
        results: Vec<OpResult>,
        revision: u64,
    },
    /// A lease granted or kept alive, as it now is.
    Lease { lease: Lease },
    /// A lease revoked, with the number of keys deleted with it.
    LeaseRevoked { id: u64, deleted: u64 },
    /// The leases an expiry removed (those not renewed since), and their keys' count.
    LeasesExpired { ids: Vec<u64>, deleted: u64 },
    /// The entry was applied by an earlier attempt whose acknowledgement was lost (a
    /// database connection that broke after its commit): its outcome is not known.
    AppliedEarlier,
}

/// Where a cluster member can be reached. Stored in the membership config inside the
/// Raft log, so every node learns every peer's addresses from the log itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// Base URL of the client API, e.g. `http://127.0.0.1:8081`.
    pub api_addr: String,
    /// Base URL of the Raft RPC listener, e.g. `http://127.0.0.1:9001`.
    pub raft_addr: String,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "api {} raft {}", self.api_addr, self.raft_addr)
    }
}

openraft::declare_raft_types!(
    /// kvstore's openraft type configuration.
    pub TypeConfig:
        D = Proposal,
        R = CommandResult,
        NodeId = u64,
        Node = NodeAddr,
);

/// Short aliases for openraft's generic types, so signatures stay readable.
pub mod typ {
    use super::TypeConfig;

    pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
    pub type Vote = openraft::alias::VoteOf<TypeConfig>;
    pub type Entry = openraft::alias::EntryOf<TypeConfig>;
    pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
    pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
    pub type Snapshot<D> = openraft::alias::SnapshotOf<TypeConfig, D>;
    pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
}
