//! The Raft wiring: the openraft type configuration, the peer network, and node
//! start-up (opening storage, building the `Raft` handle, first-start bootstrap).

mod batch;
mod network;
mod node;
mod pre_vote;
pub mod rpc;
mod rpc_server;

use serde::{Deserialize, Serialize};

pub use network::PeerNetwork;
pub use node::{
    start, Consistency, FollowerProgress, MemberInfo, NodeError, RaftNode, WeakRaftNode,
};
pub use pre_vote::outcome_labels as pre_vote_outcomes;
pub use rpc_server::rpc_app;

use crate::store::{CommandResult, Proposal};

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
