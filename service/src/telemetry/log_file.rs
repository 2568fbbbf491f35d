//! The `logging.file` writer: appends to the file, and reopens it by name when asked
//! (on SIGHUP), so logrotate can move the file away and the node carries on in a new
//! one, as nginx or syslog daemons do.
//!
//! It runs on the log writer thread only (behind the non-blocking writer), so the
//! reopen is a flag that thread checks before each write, never a lock that a request
//! could wait on.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Asks the writer to reopen its file before its next write.
#[derive(Clone, Default)]
pub struct ReopenHandle(Arc<AtomicBool>);

impl ReopenHandle {
    pub fn request(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

/// An append-only log file that can be reopened by name.
pub struct LogFile {
    path: PathBuf,
    /// Buffered: the writer thread flushes whenever it has no more lines waiting, so a
    /// burst is a few large writes instead of one per line.
    file: BufWriter<File>,
    reopen: ReopenHandle,
}

impl LogFile {
    /// Opens (creating if needed) `path` for appending.
    pub fn open(path: &Path) -> io::Result<(Self, ReopenHandle)> {
        let reopen = ReopenHandle::default();
        let file = LogFile {
            path: path.to_owned(),
            file: BufWriter::new(open_append(path)?),
            reopen: reopen.clone(),
        };
        Ok((file, reopen))
    }

    /// Switches to a freshly opened file at the same path, if one was asked for. When
    /// the path cannot be opened (a directory removed, a full disk), it keeps writing
    /// to the file it has and says so on stderr: losing the logs would be worse.
    fn reopen_if_asked(&mut self) -> io::Result<()> {
        if !self.reopen.take() {
            return Ok(());
        }
        self.file.flush()?;
        match open_append(&self.path) {
            Ok(file) => self.file = BufWriter::new(file),
            Err(e) => eprintln!(
                "kvstore: cannot reopen the log file {} (logging.file): {e}; \
                 still writing to the old one",
                self.path.display()
            ),
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.reopen_if_asked()?;
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_reopen_lines_go_to_a_new_file_at_the_same_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.log");
        let rotated = dir.path().join("kv.log.1");
        let (mut log, reopen) = LogFile::open(&path).unwrap();
        log.write_all(b"before\n").unwrap();
        log.flush().unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        // Until asked, it keeps the file it has (now under its new name).
        log.write_all(b"still old\n").unwrap();
        log.flush().unwrap();
        reopen.request();
        log.write_all(b"after\n").unwrap();
        log.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap(),
            "before\nstill old\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
    }

    #[test]
    fn a_failed_reopen_keeps_writing_to_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("logs");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("kv.log");
        let (mut log, reopen) = LogFile::open(&path).unwrap();
        let moved = dir.path().join("moved.log");
        std::fs::rename(&path, &moved).unwrap();
        std::fs::remove_dir(&sub).unwrap();
        reopen.request();
        log.write_all(b"kept\n").unwrap();
        log.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&moved).unwrap(), "kept\n");
    }
}
