//! The node-to-node protocol: the paths of the Raft RPC listener and the messages that
//! travel on them. The client (`network.rs`) and the server (`rpc_server.rs`) both use
//! these definitions, so the two sides cannot drift apart.
//!
//! Bodies are JSON, except a snapshot: one JSON line ([`SnapshotHeader`]) followed by
//! the snapshot file's bytes, streamed.
//!
//! The frequent calls (AppendEntries, forwarded writes, read indexes) also travel on
//! long-lived streams: a GET to [`STREAM`] with `Upgrade:` [`STREAM_PROTOCOL`] (checked
//! for the secret and target node like every request) turns the connection, TLS
//! included, into a sequence of frames, each a 4-byte big-endian length and that many
//! bytes. A request frame is one byte naming the call ([`stream_kind`]) and the same
//! JSON body as on HTTP; the answer frame is the same JSON answer. One call at a time per
//! stream, so a stream saves an HTTP exchange per call and nothing else changes.

use std::collections::BTreeSet;

use openraft::raft::linearizable_read::ReadLogId;
use serde::{Deserialize, Serialize};

use super::typ::{SnapshotMeta, Vote};
use super::{NodeAddr, NodeError, TypeConfig};
use crate::store::{Command, CommandResult};

pub const APPEND: &str = "/raft/append";
pub const VOTE: &str = "/raft/vote";
pub const PRE_VOTE: &str = "/raft/pre-vote";
pub const SNAPSHOT: &str = "/raft/snapshot";
pub const TRANSFER_LEADER: &str = "/raft/transfer-leader";
/// Upgraded to a stream of calls and their answers.
pub const STREAM: &str = "/raft/stream";
/// The `Upgrade` token of [`STREAM`].
pub const STREAM_PROTOCOL: &str = "kvstore-rpc/1";
/// The byte that names a call on a stream, for the paths that can take one.
pub fn stream_kind(path: &str) -> Option<u8> {
    match path {
        APPEND => Some(KIND_APPEND),
        FORWARD_WRITES => Some(KIND_FORWARD_WRITES),
        READ_INDEX => Some(KIND_READ_INDEX),
        _ => None,
    }
}

pub const KIND_APPEND: u8 = 1;
pub const KIND_FORWARD_WRITES: u8 = 2;
pub const KIND_READ_INDEX: u8 = 3;

/// The largest frame on the stream: an AppendEntries batch of large values.
pub const MAX_FRAME: usize = 1 << 30;

/// The framing of the stream.
pub fn stream_codec() -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}
/// A follower hands client writes to the leader, in a batch.
pub const FORWARD_WRITES: &str = "/raft/forward/writes";
/// A follower asks the leader for the log id a linearizable read must wait for.
pub const READ_INDEX: &str = "/raft/forward/read-index";
/// A follower hands a membership change to the leader.
pub const FORWARD_ADMIN: &str = "/raft/forward/admin";

/// Header carrying `cluster.secret` on every node-to-node request.
pub const SECRET_HEADER: &str = "x-kvstore-secret";
/// The id of the node a request is meant for; another node answers 421.
pub const TARGET_HEADER: &str = "x-kvstore-target-node";

/// Precedes the bytes of a streamed snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub vote: Vote,
    pub meta: SnapshotMeta,
}

/// The result of a forwarded operation, as the leader reports it.
pub type Forwarded<T> = Result<T, NodeError>;

/// A forwarded client write; a batch of them travels as a JSON array, and the leader
/// answers with an array of [`ForwardWriteResult`], one per write, in order.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardWrite {
    pub command: Command,
    /// W3C `traceparent` of the follower's span for this write, when it is traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

pub type ForwardWriteResult = Forwarded<CommandResult>;
pub type ReadIndexResult = Forwarded<ReadLogId<TypeConfig>>;

/// A membership change, executed by the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminOp {
    /// Add a non-voting member and wait until it has caught up.
    AddLearner { id: u64, node: NodeAddr },
    /// Make learners voters.
    Promote { ids: BTreeSet<u64> },
    /// Remove members (voters or learners) from the cluster.
    Remove { ids: BTreeSet<u64> },
    /// Hand leadership to another voter.
    TransferLeader { to: u64 },
}

pub type AdminResult = Forwarded<()>;
