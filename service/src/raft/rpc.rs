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

use openraft::EntryPayload;

use super::typ::{Entry, SnapshotMeta, Vote};
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
/// A stream on which no call arrives for this long is closed by the node serving it;
/// callers stop using an idle stream after half of that, so a call never goes out on a
/// stream that is being closed.
pub const STREAM_IDLE: std::time::Duration = std::time::Duration::from_secs(120);
/// The streams one node serves at once; beyond them a stream is declined (503) and the
/// caller sends plain requests. Each peer keeps a few (see `network.rs`).
pub const MAX_STREAMS: usize = 256;
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

/// The most client data (keys and values, see [`entry_bytes`]) one AppendEntries
/// message or one batch of forwarded writes carries, like etcd's `MaxSizePerMsg`: a
/// larger batch travels as several messages, one after another. A single entry larger
/// than this travels alone.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// The largest frame on a stream, request or answer. Every message fits: a message
/// holds at most [`MAX_MESSAGE_BYTES`] of client data, or one write (a value of at most
/// [`crate::config::MAX_VALUE_BYTES_CEILING`]), and JSON escaping at most sextuples it.
/// A frame's buffer grows as its bytes arrive, never from the length a peer announces.
pub const MAX_FRAME: usize = 64 << 20;

const _: () = {
    let data = if MAX_MESSAGE_BYTES > crate::config::MAX_VALUE_BYTES_CEILING {
        MAX_MESSAGE_BYTES
    } else {
        crate::config::MAX_VALUE_BYTES_CEILING + crate::config::MAX_KEY_BYTES_CEILING
    };
    // Entries' own fields: at most 256 entries of at most 1 KiB each.
    assert!(6 * data + 256 * 1024 <= MAX_FRAME);
};

/// What one log entry counts for against [`MAX_MESSAGE_BYTES`]: its client data, and a
/// little for its log id and framing.
pub fn entry_bytes(entry: &Entry) -> usize {
    ENTRY_OVERHEAD
        + match &entry.payload {
            EntryPayload::Normal(p) => {
                p.command.payload_bytes() + p.trace.as_ref().map_or(0, String::len)
            }
            // A membership names every node: small, counted roughly.
            EntryPayload::Membership(m) => 256 * m.nodes().count(),
            EntryPayload::Blank => 0,
        }
}

/// What one forwarded write counts for against [`MAX_MESSAGE_BYTES`].
pub fn forward_bytes(write: &ForwardWrite) -> usize {
    ENTRY_OVERHEAD + write.command.payload_bytes() + write.trace.as_ref().map_or(0, String::len)
}

const ENTRY_OVERHEAD: usize = 64;

/// The framing of a stream: a 4-byte big-endian length, then that many bytes.
pub fn stream_codec() -> Frames {
    Frames {
        inner: tokio_util::codec::LengthDelimitedCodec::builder()
            .max_frame_length(MAX_FRAME)
            .new_codec(),
    }
}

/// Length-delimited frames of at most [`MAX_FRAME`] bytes whose buffer grows as the
/// bytes arrive (tokio's codec alone reserves the announced length at once).
pub struct Frames {
    inner: tokio_util::codec::LengthDelimitedCodec,
}

impl tokio_util::codec::Decoder for Frames {
    type Item = bytes::BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut bytes::BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        let Some(head) = src.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > MAX_FRAME {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a frame of {len} bytes exceeds the limit of {MAX_FRAME}"),
            ));
        }
        if src.len() < 4 + len {
            return Ok(None);
        }
        self.inner.decode(src)
    }
}

impl tokio_util::codec::Encoder<bytes::Bytes> for Frames {
    type Error = std::io::Error;

    fn encode(&mut self, item: bytes::Bytes, dst: &mut bytes::BytesMut) -> Result<(), Self::Error> {
        self.inner.encode(item, dst)
    }
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

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};
    use tokio_util::codec::{Decoder, Encoder};

    use super::*;

    #[test]
    fn a_frame_is_decoded_once_whole_and_its_buffer_grows_with_the_data() {
        let mut codec = stream_codec();
        let mut wire = BytesMut::new();
        codec
            .encode(bytes::Bytes::from_static(b"hello"), &mut wire)
            .unwrap();
        let mut src = BytesMut::new();
        src.extend_from_slice(&wire[..6]);
        assert!(codec.decode(&mut src).unwrap().is_none());
        src.extend_from_slice(&wire[6..]);
        assert_eq!(&codec.decode(&mut src).unwrap().unwrap()[..], b"hello");

        // A peer announcing the largest frame gets no buffer of that size up front.
        let mut src = BytesMut::with_capacity(64);
        src.put_u32(MAX_FRAME as u32);
        src.put_slice(b"abc");
        assert!(codec.decode(&mut src).unwrap().is_none());
        assert!(src.capacity() < 1024, "reserved {} bytes", src.capacity());
    }

    #[test]
    fn a_frame_over_the_limit_is_refused() {
        let mut src = BytesMut::new();
        src.put_u32(MAX_FRAME as u32 + 1);
        assert!(stream_codec().decode(&mut src).is_err());
    }
}
