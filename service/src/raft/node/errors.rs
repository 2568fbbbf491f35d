//! Why a node operation failed ([`NodeError`]), and how openraft's, the network's and
//! the store's errors map onto it.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, LinearizableReadError, RaftError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::super::network::CallError;
use super::TypeConfig;

/// Why an operation did not complete. Serializable: a leader reports it to the
/// follower that forwarded the request. A failure from below (openraft, the store, the
/// network) is its [`Cause`], with the chain of sources it came with.
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
    OutcomeUnknown(#[source] Cause),
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
    Unavailable(#[source] Cause),
    /// A membership change that cannot be made (unknown node, reused id, ...).
    #[error("{0}")]
    InvalidMembership(#[source] Cause),
    /// The node is past its storage quota or below its free-space floor: new values are
    /// refused until there is room.
    #[error("{0}")]
    NoSpace(String),
    /// The storage backend cannot be reached (PostgreSQL down).
    #[error("storage unavailable: {0}")]
    StorageUnavailable(#[source] Cause),
    /// The local store failed.
    #[error("storage error: {0}")]
    Storage(#[source] Cause),
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

/// The error under a [`NodeError`]: kept whole on this node, sources and all, for the
/// log; between nodes only its text travels (and comes back as a [`Cause`] with that
/// text and no sources). Its text is what clients read, as it was before any wrapping.
#[derive(Clone)]
pub struct Cause {
    /// Said first, before the error's own text (`forwarded to leader 2, no answer`).
    context: Option<Arc<str>>,
    error: Arc<dyn Error + Send + Sync>,
}

/// A cause that is only a sentence: one of kvstore's own, or one another node sent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl Cause {
    /// `error`, with its sources.
    pub fn new(error: impl Error + Send + Sync + 'static) -> Self {
        Cause {
            context: None,
            error: Arc::new(error),
        }
    }

    /// `error` after a sentence that says what was being done.
    pub fn context(context: impl Into<String>, error: impl Error + Send + Sync + 'static) -> Self {
        Cause {
            context: Some(Arc::from(context.into())),
            error: Arc::new(error),
        }
    }

    /// A cause that is a sentence, with no error under it.
    pub fn msg(text: impl Into<String>) -> Self {
        Cause::new(Message(text.into()))
    }
}

impl From<String> for Cause {
    fn from(text: String) -> Self {
        Cause::msg(text)
    }
}

impl From<&str> for Cause {
    fn from(text: &str) -> Self {
        Cause::msg(text)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.context {
            Some(context) => write!(f, "{context}: {}", self.error),
            None => self.error.fmt(f),
        }
    }
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.context {
            Some(context) => write!(f, "{context}: {:?}", self.error),
            None => self.error.fmt(f),
        }
    }
}

impl Error for Cause {
    /// The error's own sources: its text is already in this cause's.
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.error.source()
    }
}

impl Serialize for Cause {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cause {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Cause::msg)
    }
}

/// What a forwarded change whose call to the leader failed became: not delivered (so
/// worth another try), or of unknown outcome.
pub(super) fn forward_failed(leader: u64, e: CallError) -> NodeError {
    match e {
        CallError::Unreachable(_) => NodeError::LeaderUnreachable { leader },
        e @ CallError::NoAnswer(_) => NodeError::OutcomeUnknown(Cause::context(
            format!("forwarded to leader {leader}, no answer"),
            e,
        )),
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
    NodeError::InvalidMembership(format!("node {id} is not {what} of this cluster").into())
}

pub(super) fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> NodeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => NodeError::NoLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => {
            NodeError::OutcomeUnknown(Cause::new(f))
        }
        // Another change still being committed: this one may pass once it has, so it
        // is a 503 to retry, not a 400 (two nodes joining at once meet this).
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            e @ ChangeMembershipError::InProgress(_),
        )) => NodeError::Unavailable(Cause::new(e)),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            NodeError::InvalidMembership(Cause::new(e))
        }
        RaftError::APIError(e) => NodeError::Unavailable(Cause::new(e)),
        // Raft stopped while the proposal was in its hands: the entry may be in the
        // log, and commit there or through the next leader. (A node whose Raft had
        // stopped before the proposal answers UNAVAILABLE without proposing.)
        RaftError::Fatal(e) => {
            NodeError::OutcomeUnknown(Cause::context("Raft stopped after the proposal", e))
        }
    }
}

pub(super) fn read_error(e: RaftError<TypeConfig, LinearizableReadError<TypeConfig>>) -> NodeError {
    match e {
        RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => NodeError::NoLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(e) => NodeError::Unavailable(Cause::new(e)),
        RaftError::Fatal(e) => NodeError::Unavailable(Cause::new(e)),
    }
}

pub(super) fn storage(e: std::io::Error) -> NodeError {
    if e.kind() == std::io::ErrorKind::NotConnected {
        NodeError::StorageUnavailable(Cause::new(e))
    } else {
        NodeError::Storage(Cause::new(e))
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

    /// A store failure as a backend reports it: its own sentence, over the OS error.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot write segment 3")]
    struct SegmentWrite(#[source] std::io::Error);

    #[test]
    fn storage_errors_keep_their_source_chain_and_their_text() {
        let full = std::io::Error::from_raw_os_error(28);
        let e = storage(std::io::Error::other(SegmentWrite(full)));
        assert_eq!(e.to_string(), "storage error: cannot write segment 3");
        let mut chain = Vec::new();
        let mut next: Option<&(dyn Error + 'static)> = Some(&e);
        while let Some(error) = next {
            chain.push(error);
            next = error.source();
        }
        let os = chain
            .iter()
            .find_map(|error| error.downcast_ref::<std::io::Error>())
            .unwrap_or_else(|| panic!("no io::Error in {e:?}"));
        assert_eq!(os.raw_os_error(), Some(28));
    }

    /// Between nodes a cause travels as its text, as a `String` did: an older node reads
    /// a newer one's errors and the other way round.
    #[test]
    fn a_cause_crosses_the_wire_as_its_text() {
        let e = NodeError::OutcomeUnknown(Cause::context(
            "forwarded to leader 2, no answer",
            std::io::Error::other("connection reset"),
        ));
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"OutcomeUnknown":"forwarded to leader 2, no answer: connection reset"}"#
        );
        let back: NodeError = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_string(), e.to_string());
    }
}
