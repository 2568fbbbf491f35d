//! A file system that behaves like a disk under power loss, for tests.
//!
//! SIGKILL alone cannot tell an fsync from none: the killed process's writes stay in
//! the kernel's page cache and the next process reads them. [`PowerLossFs`] mounts an
//! in-memory FUSE file system where writes stay volatile until `fsync`/`fdatasync` of
//! the file, and creates, renames and removals until `fsync` of their directory (see
//! [`disk`] for the model). [`PowerLossFs::cut`] is the power cut: everything unsynced
//! is dropped and the file system is mounted again, as after a reboot.
//!
//! The same idea as LazyFS. Mounting needs `/dev/fuse` and root (the mount is made with
//! mount(2) directly, without `fusermount`).
//!
//! ```no_run
//! let mut fs = testfs::PowerLossFs::mount("/tmp/disk").unwrap();
//! // ... start a process that writes under /tmp/disk, kill it ...
//! fs.cut().unwrap();
//! // ... start it again: it sees only what it had fsynced.
//! ```

pub mod disk;
mod fuse;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuser::{BackgroundSession, MountOption};

pub use disk::Counters;
use disk::Disk;

/// A mounted power-loss file system. Unmounted on drop.
pub struct PowerLossFs {
    disk: Arc<Mutex<Disk>>,
    mountpoint: PathBuf,
    /// `None` only during a cut.
    session: Option<BackgroundSession>,
}

impl PowerLossFs {
    /// Mounts an empty file system at `mountpoint` (an existing, empty directory).
    pub fn mount(mountpoint: impl Into<PathBuf>) -> io::Result<PowerLossFs> {
        let mountpoint = mountpoint.into();
        let disk = Arc::new(Mutex::new(Disk::new()));
        let session = Some(Self::spawn(&disk, &mountpoint)?);
        Ok(PowerLossFs {
            disk,
            mountpoint,
            session,
        })
    }

    /// Whether this machine can mount it: `/dev/fuse` is there and we are root.
    pub fn supported() -> bool {
        // SAFETY: geteuid cannot fail.
        Path::new("/dev/fuse").exists() && unsafe { libc::geteuid() } == 0
    }

    /// For tests: whether they can run here. Without `/dev/fuse` or root a test says
    /// SKIPPED and returns, unless `KV_REQUIRE_POWERLOSS` is set (CI sets it), which
    /// turns the missing support into a failure.
    pub fn available_or_skip() -> bool {
        if Self::supported() {
            return true;
        }
        assert!(
            std::env::var_os("KV_REQUIRE_POWERLOSS").is_none(),
            "KV_REQUIRE_POWERLOSS is set but a FUSE file system cannot be mounted here \
             (needs /dev/fuse and root)"
        );
        eprintln!(
            "SKIPPED: the power-loss file system needs /dev/fuse and root; \
             KV_REQUIRE_POWERLOSS=1 makes this a failure"
        );
        false
    }

    fn spawn(disk: &Arc<Mutex<Disk>>, mountpoint: &Path) -> io::Result<BackgroundSession> {
        let fs = fuse::Fuse { disk: disk.clone() };
        let options = [
            MountOption::FSName("powerloss".into()),
            MountOption::RW,
            MountOption::NoAtime,
        ];
        fuser::spawn_mount2(fs, mountpoint, &options)
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The power cut: drops everything that was not fsynced and mounts the file system
    /// again. Every process that had a file open on it must have been killed (and
    /// reaped) first: their open files went down with the power.
    pub fn cut(&mut self) -> io::Result<()> {
        self.cut_with(None)
    }

    /// A power cut that came while the kernel was writing dirty pages back: each page
    /// written since the last fsync survives with even odds (drawn from `seed`), in no
    /// particular order; the rest is dropped as by [`PowerLossFs::cut`]. What a program
    /// finds after it is a torn write, which it must detect or repair.
    pub fn torn_cut(&mut self, seed: u64) -> io::Result<()> {
        self.cut_with(Some(&mut fastrand::Rng::with_seed(seed)))
    }

    fn cut_with(&mut self, torn: Option<&mut fastrand::Rng>) -> io::Result<()> {
        self.unmount()?;
        self.disk
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cut(torn);
        self.session = Some(Self::spawn(&self.disk, &self.mountpoint)?);
        Ok(())
    }

    /// How many syncs and cuts there were, and what the cuts dropped.
    pub fn counters(&self) -> Counters {
        self.disk.lock().unwrap_or_else(|e| e.into_inner()).counters
    }

    fn unmount(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // Unmount here, where a failure (a process still using the file system) can
        // be reported instead of hanging in the session's join.
        let path = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `path` is a valid NUL-terminated string.
        if unsafe { libc::umount(path.as_ptr()) } != 0 {
            let e = io::Error::last_os_error();
            self.session = Some(session);
            return Err(io::Error::new(
                e.kind(),
                format!("cannot unmount {}: {e}", self.mountpoint.display()),
            ));
        }
        session.join();
        Ok(())
    }
}

impl Drop for PowerLossFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("{e}; detaching it");
            let path = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes());
            if let Ok(path) = path {
                // SAFETY: `path` is a valid NUL-terminated string.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}
