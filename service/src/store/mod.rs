//! The storage contract: what the replicated state machine does with a command, and the
//! backends that keep the Raft log and the data.
//!
//! Every backend provides an openraft `RaftLogStorage` (log, vote, committed index,
//! purge marker) and a `RaftStateMachine` (key-value data, last applied log id,
//! membership, snapshots), and must pass openraft's storage suite.

pub mod redb;
mod snapshot;

use serde::{Deserialize, Serialize};

pub use snapshot::{Preamble, SnapshotFile, SnapshotReader, SnapshotWriter};

/// A change to the key-value data, replicated through the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put { key: String, value: String },
    Delete { key: String },
}

impl std::fmt::Display for Command {
    // Shown in openraft's logs: names the key, never the value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Put { key, value } => write!(f, "put {key:?} ({} bytes)", value.len()),
            Command::Delete { key } => write!(f, "delete {key:?}"),
        }
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
}

/// Wraps any backend error as the `io::Error` openraft's storage traits use.
pub(crate) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
