//! Room to write: the storage quota and the free-space floor.
//!
//! Like etcd's `NOSPACE` alarm: once the stored data passes `storage.quota_bytes`, or
//! the file system of `storage.data_dir` has less than `storage.min_free_bytes` free,
//! the node refuses new values at once (507 `NO_SPACE`) while reads and deletes go on,
//! so an operator can make room. A watcher checks twice a second, so a burst of writes
//! can pass a limit by what arrives in half a second; the limits are set well below a
//! full disk for that reason. Writing resumes by itself once the data is back under the
//! quota and the floor is free again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the limits are checked.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// The limits and whether they are passed right now.
pub struct Space {
    quota_bytes: u64,
    min_free_bytes: u64,
    data_dir: PathBuf,
    full: AtomicBool,
}

impl Space {
    /// 0 turns a limit off.
    pub fn new(quota_bytes: u64, min_free_bytes: u64, data_dir: PathBuf) -> Self {
        Self {
            quota_bytes,
            min_free_bytes,
            data_dir,
            full: AtomicBool::new(false),
        }
    }

    /// Why new values are refused, if they are.
    pub fn refusal(&self) -> Option<String> {
        self.full.load(Ordering::Relaxed).then(|| {
            format!(
                "this node is out of storage space (storage.quota_bytes = {} bytes, \
                 storage.min_free_bytes = {} bytes); reads and deletes still work",
                self.quota_bytes, self.min_free_bytes
            )
        })
    }

    /// Checks the limits against `stored` bytes of data and the data dir's free space;
    /// returns whether they are passed (and remembers it).
    pub fn check(&self, stored: u64) -> bool {
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
        let space = Space::new(1000, 0, dir.path().to_owned());
        assert!(!space.check(999) && space.refusal().is_none());
        assert!(space.check(1001));
        assert!(space.refusal().unwrap().contains("storage.quota_bytes"));
        assert!(!space.check(10));
        // A floor above any real disk's free space.
        let space = Space::new(0, u64::MAX, dir.path().to_owned());
        assert!(space.check(0));
        let space = Space::new(0, 0, dir.path().to_owned());
        assert!(!space.check(u64::MAX));
    }
}
