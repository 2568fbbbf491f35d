//! Room to write: the storage quota and the free-space floor.
//!
//! Like etcd's `NOSPACE` alarm: once the stored data passes `storage.quota_bytes`, or
//! the file system of `storage.data_dir` has less than `storage.min_free_bytes` free,
//! the node refuses new values at once (507 `NO_SPACE`) while reads and deletes go on,
//! so an operator can make room. A watcher checks twice a second, so a burst of writes
//! can pass a limit by what arrives in half a second; the limits are set well below a
//! full disk for that reason. Writing resumes by itself once the data is back under the
//! quota and the floor is free again.
//!
//! The limits can be off, or a burst can outrun them: then a write to disk fails with
//! `ENOSPC` itself. [`DiskFull`] records that. The node refuses new values the same way
//! and is not ready; the store keeps retrying the failed write with a growing pause
//! (each retry is the probe that finds room again) and clears the record once it
//! succeeds.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the limits are checked.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// The limits and whether they are passed right now.
pub struct Space {
    quota_bytes: u64,
    min_free_bytes: u64,
    data_dir: PathBuf,
    full: AtomicBool,
    /// Whether a write to disk failed for want of space and has not succeeded since.
    disk_full: Arc<DiskFull>,
}

impl Space {
    /// 0 turns a limit off.
    pub fn new(
        quota_bytes: u64,
        min_free_bytes: u64,
        data_dir: PathBuf,
        disk_full: Arc<DiskFull>,
    ) -> Self {
        Self {
            quota_bytes,
            min_free_bytes,
            data_dir,
            full: AtomicBool::new(false),
            disk_full,
        }
    }

    /// Why new values are refused, if they are.
    pub fn refusal(&self) -> Option<String> {
        if self.full.load(Ordering::Relaxed) {
            return Some(format!(
                "this node is out of storage space (storage.quota_bytes = {} bytes, \
                 storage.min_free_bytes = {} bytes); reads and deletes still work",
                self.quota_bytes, self.min_free_bytes
            ));
        }
        self.disk_full.reason()
    }

    /// Checks the limits against `stored` bytes of data and the data dir's free space;
    /// returns whether they are passed (and remembers it), or the disk is full.
    pub fn check(&self, stored: u64) -> bool {
        self.check_limits(stored) || self.disk_full.is_full()
    }

    fn check_limits(&self, stored: u64) -> bool {
        let over_quota = self.quota_bytes > 0 && stored > self.quota_bytes;
        let low = self.min_free_bytes > 0
            && free_bytes(&self.data_dir).is_some_and(|free| free < self.min_free_bytes);
        let full = over_quota || low;
        let was = self.full.swap(full, Ordering::Relaxed);
        if full != was {
            if full {
                tracing::warn!(
                    stored,
                    over_quota,
                    low_free_space = low,
                    "out of storage space: refusing new values until there is room"
                );
            } else {
                tracing::info!(stored, "storage space is back: accepting new values");
            }
        }
        full
    }
}

/// Which of the store's writers hit a full disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// The embedded Raft log (its segment files and `kvstore.redb`).
    Log = 1,
    /// The embedded state machine (`state.redb`).
    StateMachine = 2,
    /// PostgreSQL, which holds both (its `53100 disk_full`, or `53200 out_of_memory`).
    Database = 4,
}

/// Which writers found the disk full on their last attempt. Set by the store when a
/// write fails with `ENOSPC` (or the user's disk quota), cleared when a retry of it
/// succeeds.
#[derive(Debug, Default)]
pub struct DiskFull {
    writers: AtomicU8,
}

impl DiskFull {
    /// Records that `writer` failed for want of space.
    pub fn mark(&self, writer: Writer, error: &io::Error) {
        let before = self.writers.fetch_or(writer as u8, Ordering::SeqCst);
        if before & writer as u8 == 0 {
            tracing::warn!(
                ?writer,
                %error,
                "the disk is full: refusing new values and retrying the failed write until there is room"
            );
        }
    }

    /// Records that `writer`'s write succeeded.
    pub fn clear(&self, writer: Writer) {
        let before = self.writers.fetch_and(!(writer as u8), Ordering::SeqCst);
        if before & writer as u8 != 0 {
            tracing::info!(?writer, "a write succeeded again: the disk has room");
        }
    }

    pub fn is_full(&self) -> bool {
        self.writers.load(Ordering::SeqCst) != 0
    }

    /// Whether `writer` found the disk full and has not succeeded since.
    pub fn is_marked(&self, writer: Writer) -> bool {
        self.writers.load(Ordering::SeqCst) & writer as u8 != 0
    }

    /// Why new values are refused, if the disk is full.
    pub fn reason(&self) -> Option<String> {
        self.is_full().then(|| {
            "this node's disk is full (a write failed: no space left on device); new \
             values are refused until it has room again, which it finds out by itself; \
             reads still work"
                .to_string()
        })
    }
}

/// Whether `e` says the disk, or the user's disk quota, is full.
pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error() || code == rustix::io::Errno::DQUOT.raw_os_error())
}

/// Bytes free for unprivileged writers on the file system holding `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_quota_or_below_the_floor_is_full_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(DiskFull::default());
        let space = Space::new(1000, 0, dir.path().to_owned(), disk.clone());
        assert!(!space.check(999) && space.refusal().is_none());
        assert!(space.check(1001));
        assert!(space.refusal().unwrap().contains("storage.quota_bytes"));
        assert!(!space.check(10));
        // A floor above any real disk's free space.
        let space = Space::new(0, u64::MAX, dir.path().to_owned(), disk.clone());
        assert!(space.check(0));
        let space = Space::new(0, 0, dir.path().to_owned(), disk.clone());
        assert!(!space.check(u64::MAX));
        // A write that failed for want of space, until it succeeds again.
        let enospc = io::Error::from_raw_os_error(28);
        assert!(is_out_of_space(&enospc));
        assert!(!is_out_of_space(&io::Error::other("x")));
        disk.mark(Writer::Log, &enospc);
        disk.mark(Writer::StateMachine, &enospc);
        assert!(space.check(0) && space.refusal().unwrap().contains("disk is full"));
        disk.clear(Writer::Log);
        assert!(space.check(0));
        disk.clear(Writer::StateMachine);
        assert!(!space.check(0) && space.refusal().is_none());
    }
}
