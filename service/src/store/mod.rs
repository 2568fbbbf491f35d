//! Where a node keeps its Raft log and its data: the contract a storage backend
//! implements (`contract.rs`), the two backends, `redb` (embedded files under
//! `storage.data_dir`) and `postgres`, and the wrapper the node holds (`wrapper.rs`),
//! which speaks openraft's storage traits on top of either.
//!
//! Both backends, and the wrapper over each, pass openraft's storage suite.

pub mod commands;
pub mod contract;
mod either;
mod lease_clock;
pub mod postgres;
pub mod redb;
mod snapshot;
pub mod space;
mod wrapper;

use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::IOFlushed;
use serde::Serialize;

pub use contract::{Open, OpenError, Opened};
pub use either::Either;
pub use lease_clock::LeaseClock;
pub use postgres::Postgres;
pub use redb::Redb;
pub use snapshot::{Preamble, SnapshotFile, SnapshotReader, SnapshotWriter};
pub use space::{is_out_of_space, DiskFull};
pub use wrapper::{LogStore, StateMachine, Store, StoreHandle};

use crate::config::{Settings, StorageType};
use crate::types::typ::StoredMembership;
use crate::types::TypeConfig;
pub use crate::types::{Command, CommandResult, Proposal};

/// The backend the node runs on: the embedded store or PostgreSQL, as `storage.type`
/// says. A third backend nests here (`Either<Redb, Either<Postgres, Third>>`) and gets
/// its arm in [`open`]; no dispatch code changes.
pub type AnyBackend = Either<Redb, Postgres>;

/// Opens the backend `storage.type` names.
pub async fn open(settings: &Settings) -> anyhow::Result<Store> {
    let disk_full = Arc::new(DiskFull::default());
    let opened = match settings.storage.kind {
        StorageType::File => Opened::left(Redb::open(settings, disk_full.clone()).await?),
        StorageType::Database => Opened::right(Postgres::open(settings, disk_full.clone()).await?),
    };
    Ok(Store::new(opened, disk_full))
}

/// Tells openraft how a log append ended (only once it is durable, or failed) and
/// returns the same result to the caller.
pub(crate) fn report_flushed(
    callback: IOFlushed<TypeConfig>,
    result: io::Result<()>,
) -> io::Result<()> {
    match result {
        Ok(()) => {
            callback.io_completed(Ok(()));
            Ok(())
        }
        Err(e) => {
            callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
            Err(e)
        }
    }
}

/// Wraps any backend error as the `io::Error` openraft's storage traits use.
pub(crate) fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Encodes a log entry or metadata value (JSON).
pub(crate) fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(io_err)
}

/// Decodes a value stored by [`encode`].
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("corrupt record: {e}")))
}

/// The first pause before a write that failed for want of space is tried again, and
/// the longest: the pause doubles between them.
pub(crate) const RETRY_FIRST: Duration = Duration::from_millis(100);
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(2);

/// Runs `write` until it succeeds or fails for a reason other than a full disk. While
/// the disk is full it marks `writer` in `disk_full`, calls `recover` (which undoes
/// what the failed attempt left half done) and waits a growing pause. Blocking.
pub(crate) fn retry_while_full<T>(
    disk_full: &DiskFull,
    writer: space::Writer,
    mut recover: impl FnMut(),
    mut write: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let mut pause = RETRY_FIRST;
    loop {
        match write() {
            Err(e) if is_out_of_space(&e) => {
                disk_full.mark(writer, &e);
                recover();
                std::thread::sleep(pause);
                pause = (pause * 2).min(RETRY_MAX);
            }
            Ok(value) => {
                disk_full.clear(writer);
                return Ok(value);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs blocking storage work off the async runtime's worker threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io::Error::other(format!("storage task failed: {e}")))?
}

/// Adds to `retired` the members of `previous` that `next` leaves out: a node that
/// leaves the membership is retired for good, and its id is never reused. Returns
/// whether the set grew.
pub(crate) fn retire_leavers(
    retired: &mut BTreeSet<u64>,
    previous: &StoredMembership,
    next: &openraft::Membership<u64, crate::types::NodeAddr>,
) -> bool {
    let before = retired.len();
    retired.extend(
        previous
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| next.get_node(id).is_none()),
    );
    retired.len() != before
}

/// Creates the data dir if needed and proves a file can be written in it, so a
/// read-only or foreign-owned directory fails at start, not at the first write.
pub(crate) fn check_writable(dir: &Path) -> io::Result<()> {
    create_dir_durably(dir)?;
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"ok")?;
    std::fs::remove_file(&probe)
}

/// Creates `dir` (and missing parents) so that the creation survives a power loss: the
/// parent of each directory created is fsynced.
pub(crate) fn create_dir_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durably(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_parent(dir)
}

/// Fsyncs the directory holding `path`, so that a file or directory created or renamed
/// there survives a power loss.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    sync_dir(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
}

/// Makes a directory's entries (files created, renamed or removed in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Log entries for the backends' unit tests.
#[cfg(test)]
pub(crate) mod test_entries {
    use openraft::entry::RaftEntry;

    use super::{Command, Proposal};
    use crate::types::typ::{Entry, LogId};

    pub fn entry(index: u64, command: Command) -> Entry {
        let leader = openraft::impls::leader_id_adv::LeaderId {
            term: 1,
            node_id: 1,
        };
        let log_id = LogId::new(leader, index);
        Entry::new_normal(
            log_id,
            Proposal {
                command,
                trace: None,
            },
        )
    }

    pub fn put(index: u64, key: &str, value: &str) -> Entry {
        entry(index, Command::put(key, value))
    }

    pub fn delete(index: u64, key: &str) -> Entry {
        entry(index, Command::delete(key))
    }

    pub fn delete_range(index: u64, start: &str, end: Option<&str>) -> Entry {
        entry(
            index,
            Command::DeleteRange {
                start: start.into(),
                end: end.map(Into::into),
            },
        )
    }
}
