//! Why a node operation failed ([`NodeError`]), and how openraft's, the network's and
//! the store's errors map onto it.

use std::time::Duration;

use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use serde::{Deserialize, Serialize};

use super::super::network::CallError;
use super::TypeConfig;

/// Why an operation did not complete. Serializable: a leader reports it to the
/// follower that forwarded the request.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub enum NodeError {
    /// No leader is known, or the node asked is not the leader.
    #[error("no leader is available to serve this request{}", leader_hint(.leader))]
    NoLeader { leader: Option<u64> },
    /// The leader is known but could not be reached; the request was not delivered.
    #[error("the leader (node {leader}) is unreachable")]
    LeaderUnreachable { leader: u64 },
    /// The write was proposed but its fate is unknown: leadership changed, or the
    /// leader stopped answering, before it was known to commit.
    #[error("write outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The operation did not finish within `server.request_timeout`. For a write, the
    /// outcome is unknown.
    #[error("request did not complete within {0:?}")]
    Timeout(Duration),
    /// Too many bytes of writes are in flight (`server.max_in_flight_bytes`); the write
    /// was not proposed.
    #[error("{0}")]
    Overloaded(String),
    /// This node leads, but no majority has acknowledged it within the leader lease: it
    /// may be cut off, and a new leader may already serve the others.
    #[error("no leader is available here: this node has not heard from a majority of the cluster for over {0:?}")]
    NoQuorum(Duration),
    /// The quorum could not be confirmed, or Raft has stopped.
    #[error("node unavailable: {0}")]
    Unavailable(String),
    /// A membership change that cannot be made (unknown node, reused id, ...).
    #[error("{0}")]
    InvalidMembership(String),
    /// The node is past its storage quota or below its free-space floor: new values are
    /// refused until there is room.
    #[error("{0}")]
    NoSpace(String),
    /// The storage backend cannot be reached (PostgreSQL down).
    #[error("storage unavailable: {0}")]
    StorageUnavailable(String),
    /// The local store failed.
    #[error("storage error: {0}")]
    Storage(String),
}

impl NodeError {
    /// Errors after which the request provably did not take effect, so trying again
    /// (possibly at a new leader) is safe.
    pub(super) fn is_retryable(&self) -> bool {
        matches!(
            self,
            NodeError::NoLeader { .. } | NodeError::LeaderUnreachable { .. }
        )
    }
}

fn leader_hint(leader: &Option<u64>) -> String {
    match leader {
        Some(id) => format!(" (last known leader: node {id})"),
        None => String::new(),
    }
}

/// What a forwarded change whose call to the leader failed became: not delivered (so
/// worth another try), or of unknown outcome.
pub(super) fn forward_failed(leader: u64, e: CallError) -> NodeError {
    match e {
        CallError::Unreachable(_) => NodeError::LeaderUnreachable { leader },
        CallError::NoAnswer(e) => {
            NodeError::OutcomeUnknown(format!("forwarded to leader {leader}, no answer: {e}"))
        }
    }
}

/// The `reason` label of a failed proposal.
pub(super) fn failure_reason(e: &NodeError) -> &'static str {
    match e {
        NodeError::NoLeader { .. }
        | NodeError::LeaderUnreachable { .. }
        | NodeError::NoQuorum(_) => "no_leader",
        NodeError::Timeout(_) => "timeout",
        NodeError::Overloaded(_) => "overloaded",
        NodeError::OutcomeUnknown(_) => "outcome_unknown",
        NodeError::StorageUnavailable(_) | NodeError::Storage(_) | NodeError::NoSpace(_) => {
            "storage"
        }
        NodeError::Unavailable(_) | NodeError::InvalidMembership(_) => "other",
    }
}

pub(super) fn unknown(id: u64, what: &str) -> NodeError {
    NodeError::InvalidMembership(format!("node {id} is not {what} of this cluster"))
}

pub(super) fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> NodeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => NodeError::NoLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => {
            NodeError::OutcomeUnknown(f.to_string())
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            NodeError::InvalidMembership(e.to_string())
        }
        RaftError::APIError(e) => NodeError::Unavailable(e.to_string()),
        // Raft stopped while the proposal was in its hands: the entry may be in the
        // log, and commit there or through the next leader. (A node whose Raft had
        // stopped before the proposal answers UNAVAILABLE without proposing.)
        RaftError::Fatal(e) => {
            NodeError::OutcomeUnknown(format!("Raft stopped after the proposal: {e}"))
        }
    }
}

pub(super) fn read_error(e: RaftError<TypeConfig, LinearizableReadError<TypeConfig>>) -> NodeError {
    match e {
        RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => NodeError::NoLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(e) => NodeError::Unavailable(e.to_string()),
        RaftError::Fatal(e) => NodeError::Unavailable(e.to_string()),
    }
}

pub(super) fn storage(e: std::io::Error) -> NodeError {
    if e.kind() == std::io::ErrorKind::NotConnected {
        NodeError::StorageUnavailable(e.to_string())
    } else {
        NodeError::Storage(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a proposal, the only honest answers are success, a definite failure, or
    /// OUTCOME_UNKNOWN: Raft stopping with the entry in its hands is not a definite
    /// failure.
    #[test]
    fn a_fatal_error_after_the_proposal_is_an_unknown_outcome() {
        for fatal in [
            openraft::error::Fatal::Stopped,
            openraft::error::Fatal::Panicked,
        ] {
            let e = write_error(RaftError::Fatal(fatal));
            assert!(matches!(e, NodeError::OutcomeUnknown(_)), "{e:?}");
            assert!(!e.is_retryable());
        }
    }
}
