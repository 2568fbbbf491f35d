//! The FUSE side: each kernel request becomes one operation on the shared [`Disk`].
//!
//! Nothing may be cached by the kernel, or a cut would not be seen: entries and
//! attributes are valid for zero seconds and every file is opened with direct I/O (no
//! page cache). The file system is mounted again after each cut as well, which drops
//! whatever the kernel still remembered.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::consts::FOPEN_DIRECT_IO;
use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

use crate::disk::{Disk, Errno, Kind, ROOT};

/// How long the kernel may trust an entry or attributes: not at all.
const TTL: Duration = Duration::ZERO;
/// `rename(2)`'s RENAME_NOREPLACE.
const RENAME_NOREPLACE: u32 = 1;

pub struct Fuse {
    pub disk: Arc<Mutex<Disk>>,
}

impl Fuse {
    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn attr(disk: &Disk, ino: u64) -> Result<FileAttr, Errno> {
    let node = disk.node(ino)?;
    let size = node.size();
    Ok(FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: node.mtime,
        mtime: node.mtime,
        ctime: node.mtime,
        crtime: UNIX_EPOCH,
        kind: if node.is_dir() {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: node.perm,
        nlink: if node.is_dir() { 2 } else { 1 },
        uid: node.uid,
        gid: node.gid,
        rdev: 0,
        blksize: crate::disk::PAGE as u32,
        flags: 0,
    })
}

/// Answers an operation that returns nothing but success or an error.
fn done(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// Answers a lookup, mknod or mkdir with the entry's attributes.
fn entry(reply: ReplyEntry, result: Result<FileAttr, Errno>) {
    match result {
        Ok(a) => reply.entry(&TTL, &a, 0),
        Err(e) => reply.error(e),
    }
}

fn attributes(reply: ReplyAttr, result: Result<FileAttr, Errno>) {
    match result {
        Ok(a) => reply.attr(&TTL, &a),
        Err(e) => reply.error(e),
    }
}

fn perm(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

impl Fuse {
    fn make(
        &self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        perm: u16,
    ) -> Result<FileAttr, Errno> {
        let mut disk = self.disk();
        let ino = disk.create(parent, name, kind, perm, (req.uid(), req.gid()))?;
        attr(&disk, ino)
    }
}

impl Filesystem for Fuse {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let disk = self.disk();
        entry(
            reply,
            disk.lookup(parent, name).and_then(|ino| attr(&disk, ino)),
        )
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        attributes(reply, attr(&self.disk(), ino))
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut disk = self.disk();
        if let Some(size) = size {
            if let Err(e) = disk.set_len(ino, size) {
                return reply.error(e);
            }
        }
        let mtime = mtime.map(|t| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        });
        disk.set_attr(ino, mode.map(|m| perm(m, 0)), mtime);
        attributes(reply, attr(&disk, ino))
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(libc::EPERM);
        }
        entry(
            reply,
            self.make(req, parent, name, Kind::File, perm(mode, umask)),
        )
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            self.make(req, parent, name, Kind::Dir, perm(mode, umask)),
        )
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        done(reply, self.disk().remove(parent, name, false))
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        done(reply, self.disk().remove(parent, name, true))
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        if flags & !RENAME_NOREPLACE != 0 {
            return reply.error(libc::EINVAL);
        }
        let no_replace = flags & RENAME_NOREPLACE != 0;
        done(
            reply,
            self.disk()
                .rename(parent, name, newparent, newname, no_replace),
        )
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let mut disk = self.disk();
        let result = match disk.node(ino) {
            Ok(node) if node.is_dir() => Err(libc::EISDIR),
            Ok(_) if flags & libc::O_TRUNC != 0 => disk.set_len(ino, 0),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => reply.opened(0, FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let made = self.make(req, parent, name, Kind::File, perm(mode, umask));
        // Another opener may have created it since the kernel looked: open that one.
        let made = match made {
            Err(libc::EEXIST) if flags & libc::O_EXCL == 0 => {
                let mut disk = self.disk();
                disk.lookup(parent, name).and_then(|ino| {
                    if flags & libc::O_TRUNC != 0 {
                        disk.set_len(ino, 0)?;
                    }
                    attr(&disk, ino)
                })
            }
            other => other,
        };
        match made {
            Ok(a) => reply.created(&TTL, &a, 0, 0, FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        match self.disk().read(ino, offset as u64, size as usize) {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        match self.disk().write(ino, offset as u64, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    /// Closing a file syncs nothing.
    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _owner: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        done(reply, self.disk().sync_file(ino))
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.disk().node(ino) {
            Ok(node) if node.is_dir() => reply.opened(0, 0),
            Ok(_) => reply.error(libc::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.disk().list(ino) {
            Ok(entries) => entries,
            Err(e) => return reply.error(e),
        };
        let dots = [(".".into(), ino, true), ("..".into(), ROOT, true)];
        let all = dots.into_iter().chain(entries);
        for (i, (name, child, is_dir)) in all.enumerate().skip(offset as usize) {
            let kind = if is_dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            if reply.add(child, i as i64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        done(reply, self.disk().sync_dir(ino))
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let blocks = 1 << 24;
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    /// Only plain preallocation (mode 0), which extends the file with zeros.
    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(libc::EOPNOTSUPP);
        }
        let mut disk = self.disk();
        let end = (offset + length) as u64;
        let result = match disk.node(ino) {
            Ok(node) if node.size() < end => disk.set_len(ino, end),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        done(reply, result)
    }
}
