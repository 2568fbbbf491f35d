//! The ground floor: the openraft type configuration and the types every layer shares
//! (what a client command is, how it travels in the Raft log, what applying it returns,
//! where a member is reached). It imports nothing else of this crate, so the storage
//! backends build on it without depending on the Raft wiring above them.

use serde::{Deserialize, Serialize};

/// A change to the key-value data, replicated through the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// Deletes every key in `[start, end)` (`end: None`: no upper bound), in one log
    /// entry, so that no node ever shows the range half deleted.
    DeleteRange {
        start: String,
        end: Option<String>,
    },
}

impl Command {
    /// The bytes of client data the command carries (key and value): what bounds its
    /// share of replication messages and of the leader's bytes in flight.
    pub fn payload_bytes(&self) -> usize {
        match self {
            Command::Put { key, value } => key.len() + value.len(),
            Command::Delete { key } => key.len(),
            Command::DeleteRange { start, end } => {
                start.len() + end.as_ref().map_or(0, String::len)
            }
        }
    }
}

impl std::fmt::Display for Command {
    // Shown in openraft's logs: names the key, never the value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Put { key, value } => write!(f, "put {key:?} ({} bytes)", value.len()),
            Command::Delete { key } => write!(f, "delete {key:?}"),
            Command::DeleteRange {
                start,
                end: Some(end),
            } => {
                write!(f, "delete range [{start:?}, {end:?})")
            }
            Command::DeleteRange { start, end: None } => write!(f, "delete range [{start:?}, ..)"),
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
/// Whether a delete found its key is decided by the state machine, at the command's
/// place in the log, so a 404 for a delete is as linearizable as the delete itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CommandResult {
    /// Blank and membership entries carry no client command.
    #[default]
    None,
    Stored,
    Deleted {
        existed: bool,
    },
    /// A range delete: how many keys it removed.
    DeletedRange {
        count: u64,
    },
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
