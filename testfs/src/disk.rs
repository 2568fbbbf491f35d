//! The disk model behind the file system: two versions of every file and directory.
//!
//! - **live**: what processes see. Every write, create, rename and removal lands here at
//!   once, as in a kernel's page cache.
//! - **durable**: what survives a power cut. A file's data (and size) reach it only when
//!   the file is fsynced; a directory's entries (creates, renames, removals) only when
//!   the directory itself is fsynced, which is what POSIX promises and no more.
//!
//! A cut throws the live version away and continues from the durable one. Inode
//! numbers are never reused, so a name that comes back after a cut points at the inode
//! it pointed at when its directory was last fsynced.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

/// The granularity of unsynced data: a write dirties the pages it touches, and an
/// fsync copies those pages to the durable version.
pub const PAGE: u64 = 4096;

/// The root directory's inode number (FUSE's).
pub const ROOT: u64 = 1;

/// An error for the caller of a file operation, as an errno.
pub type Errno = i32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    File(Vec<u8>),
    /// Name -> inode.
    Dir(BTreeMap<OsString, u64>),
}

/// One file or directory.
#[derive(Debug, Clone)]
pub struct Node {
    pub content: Content,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

impl Node {
    fn new_dir(perm: u16, uid: u32, gid: u32) -> Node {
        Node {
            content: Content::Dir(BTreeMap::new()),
            perm,
            uid,
            gid,
            mtime: SystemTime::now(),
        }
    }

    /// The same node with nothing in it: what the durable version holds of a file or
    /// directory whose entry was synced before its contents were.
    fn emptied(&self) -> Node {
        let content = match self.content {
            Content::File(_) => Content::File(Vec::new()),
            Content::Dir(_) => Content::Dir(BTreeMap::new()),
        };
        Node {
            content,
            ..self.clone()
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.content, Content::Dir(_))
    }

    pub fn size(&self) -> u64 {
        match &self.content {
            Content::File(data) => data.len() as u64,
            Content::Dir(entries) => entries.len() as u64,
        }
    }
}

/// What a file system operation creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// What the syncs and cuts did, for test reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// fsync/fdatasync calls on files.
    pub file_syncs: u64,
    /// fsync calls on directories.
    pub dir_syncs: u64,
    /// Power cuts.
    pub cuts: u64,
    /// Pages written but not fsynced when the power went, summed over all cuts.
    pub pages_lost: u64,
    /// Unsynced pages that a torn cut wrote back before the power went.
    pub pages_written_back: u64,
    /// Directories whose entries had changed since their last fsync when the power
    /// went, summed over all cuts.
    pub dirs_reverted: u64,
}

/// Both versions of the file system, and what is unsynced between them.
#[derive(Debug)]
pub struct Disk {
    live: HashMap<u64, Node>,
    durable: HashMap<u64, Node>,
    /// File inode -> pages written (or truncated) since its last fsync.
    dirty: HashMap<u64, BTreeSet<u64>>,
    next_ino: u64,
    pub counters: Counters,
}

impl Default for Disk {
    fn default() -> Self {
        Self::new()
    }
}

impl Disk {
    /// An empty file system whose root belongs to the calling user.
    pub fn new() -> Disk {
        // SAFETY: getuid and getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let root = Node::new_dir(0o755, uid, gid);
        Disk {
            live: HashMap::from([(ROOT, root.clone())]),
            durable: HashMap::from([(ROOT, root)]),
            dirty: HashMap::new(),
            next_ino: ROOT + 1,
            counters: Counters::default(),
        }
    }

    pub fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.live.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.live.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match &self.node(dir)?.content {
            Content::Dir(entries) => Ok(entries),
            Content::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        let node = self.node_mut(dir)?;
        node.mtime = SystemTime::now();
        match &mut node.content {
            Content::Dir(entries) => Ok(entries),
            Content::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn data_mut(&mut self, ino: u64) -> Result<&mut Vec<u8>, Errno> {
        let node = self.node_mut(ino)?;
        node.mtime = SystemTime::now();
        match &mut node.content {
            Content::File(data) => Ok(data),
            Content::Dir(_) => Err(libc::EISDIR),
        }
    }

    pub fn lookup(&self, dir: u64, name: &OsStr) -> Result<u64, Errno> {
        self.entries(dir)?.get(name).copied().ok_or(libc::ENOENT)
    }

    /// The entries of a directory, in name order.
    pub fn list(&self, dir: u64) -> Result<Vec<(OsString, u64, bool)>, Errno> {
        Ok(self
            .entries(dir)?
            .iter()
            .map(|(name, ino)| (name.clone(), *ino, self.live[ino].is_dir()))
            .collect())
    }

    pub fn create(
        &mut self,
        dir: u64,
        name: &OsStr,
        kind: Kind,
        perm: u16,
        owner: (u32, u32),
    ) -> Result<u64, Errno> {
        if self.entries(dir)?.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let mut node = Node::new_dir(perm, owner.0, owner.1);
        if kind == Kind::File {
            node.content = Content::File(Vec::new());
        }
        self.live.insert(ino, node);
        self.entries_mut(dir)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// Removes a file's (`want_dir` false) or an empty directory's entry. The inode
    /// stays readable through handles that are still open.
    pub fn remove(&mut self, dir: u64, name: &OsStr, want_dir: bool) -> Result<(), Errno> {
        let ino = self.lookup(dir, name)?;
        let node = self.node(ino)?;
        match (&node.content, want_dir) {
            (Content::File(_), true) => return Err(libc::ENOTDIR),
            (Content::Dir(_), false) => return Err(libc::EISDIR),
            (Content::Dir(entries), true) if !entries.is_empty() => return Err(libc::ENOTEMPTY),
            _ => {}
        }
        self.entries_mut(dir)?.remove(name);
        Ok(())
    }

    /// Moves an entry, replacing a file (or an empty directory) at the target.
    /// `no_replace`: fail with EEXIST instead (RENAME_NOREPLACE).
    pub fn rename(
        &mut self,
        from_dir: u64,
        from: &OsStr,
        to_dir: u64,
        to: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let ino = self.lookup(from_dir, from)?;
        let moving_dir = self.node(ino)?.is_dir();
        self.entries(to_dir)?;
        if let Ok(target) = self.lookup(to_dir, to) {
            if target == ino {
                return Ok(());
            }
            if no_replace {
                return Err(libc::EEXIST);
            }
            match (&self.node(target)?.content, moving_dir) {
                (Content::Dir(_), false) => return Err(libc::EISDIR),
                (Content::File(_), true) => return Err(libc::ENOTDIR),
                (Content::Dir(entries), true) if !entries.is_empty() => {
                    return Err(libc::ENOTEMPTY)
                }
                _ => {}
            }
        }
        self.entries_mut(from_dir)?.remove(from);
        self.entries_mut(to_dir)?.insert(to.to_owned(), ino);
        Ok(())
    }

    pub fn read(&self, ino: u64, offset: u64, size: usize) -> Result<&[u8], Errno> {
        match &self.node(ino)?.content {
            Content::File(data) => {
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(size).min(data.len());
                Ok(&data[start..end])
            }
            Content::Dir(_) => Err(libc::EISDIR),
        }
    }

    pub fn write(&mut self, ino: u64, offset: u64, bytes: &[u8]) -> Result<usize, Errno> {
        let data = self.data_mut(ino)?;
        let start = offset as usize;
        let end = start + bytes.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(bytes);
        self.mark_dirty(ino, offset, end as u64);
        Ok(bytes.len())
    }

    /// Truncates or extends (with zeros) a file.
    pub fn set_len(&mut self, ino: u64, len: u64) -> Result<(), Errno> {
        let data = self.data_mut(ino)?;
        let old = data.len() as u64;
        data.resize(len as usize, 0);
        // The bytes between the old and the new end differ from what the durable
        // version may hold there.
        self.mark_dirty(ino, old.min(len), old.max(len));
        Ok(())
    }

    pub fn set_attr(&mut self, ino: u64, perm: Option<u16>, mtime: Option<SystemTime>) {
        if let Ok(node) = self.node_mut(ino) {
            node.perm = perm.unwrap_or(node.perm);
            node.mtime = mtime.unwrap_or(node.mtime);
        }
    }

    fn mark_dirty(&mut self, ino: u64, start: u64, end: u64) {
        if start < end {
            self.dirty
                .entry(ino)
                .or_default()
                .extend(start / PAGE..end.div_ceil(PAGE));
        }
    }

    /// fsync/fdatasync of a file: its data and size become durable (its name does not:
    /// that takes an fsync of the directory).
    pub fn sync_file(&mut self, ino: u64) -> Result<(), Errno> {
        let node = self.live.get(&ino).ok_or(libc::ENOENT)?;
        let Content::File(data) = &node.content else {
            return self.sync_dir(ino);
        };
        self.counters.file_syncs += 1;
        let durable = self.durable.entry(ino).or_insert_with(|| node.emptied());
        let Content::File(saved) = &mut durable.content else {
            unreachable!("an inode never changes kind");
        };
        saved.resize(data.len(), 0);
        for page in self.dirty.remove(&ino).unwrap_or_default() {
            let start = (page * PAGE) as usize;
            let end = (start + PAGE as usize).min(data.len());
            if start < end {
                saved[start..end].copy_from_slice(&data[start..end]);
            }
        }
        durable.perm = node.perm;
        durable.mtime = node.mtime;
        Ok(())
    }

    /// fsync of a directory: its entries become durable. An entry's inode exists in the
    /// durable version from then on, empty unless it was fsynced itself.
    pub fn sync_dir(&mut self, ino: u64) -> Result<(), Errno> {
        let entries = self.entries(ino)?.clone();
        self.counters.dir_syncs += 1;
        for child in entries.values() {
            if !self.durable.contains_key(child) {
                let empty = self.live[child].emptied();
                self.durable.insert(*child, empty);
            }
        }
        let node = &self.live[&ino];
        let durable = self.durable.entry(ino).or_insert_with(|| node.emptied());
        durable.content = Content::Dir(entries);
        durable.perm = node.perm;
        durable.mtime = node.mtime;
        Ok(())
    }

    /// The power goes: everything not fsynced is gone, except, when `torn` gives a
    /// random source, each unsynced page of a file whose inode is durable has made it
    /// to the disk with even odds (the kernel may write back any dirty page, in any
    /// order, before the power goes). Only call it when no process has anything open
    /// on the file system.
    pub fn cut(&mut self, torn: Option<&mut fastrand::Rng>) {
        if let Some(rng) = torn {
            self.write_back_some(rng);
        }
        self.counters.cuts += 1;
        self.counters.pages_lost += self.dirty.values().map(|p| p.len() as u64).sum::<u64>();
        self.counters.dirs_reverted += self
            .live
            .iter()
            .filter(|(ino, node)| {
                node.is_dir() && self.durable.get(ino).map(|d| &d.content) != Some(&node.content)
            })
            .count() as u64;
        self.dirty.clear();
        self.durable = reachable(&self.durable);
        self.live = self.durable.clone();
    }
}

impl Disk {
    fn write_back_some(&mut self, rng: &mut fastrand::Rng) {
        for (ino, pages) in &mut self.dirty {
            let (Some(live), Some(saved)) = (self.live.get(ino), self.durable.get_mut(ino)) else {
                continue;
            };
            let (Content::File(data), Content::File(saved)) = (&live.content, &mut saved.content)
            else {
                continue;
            };
            pages.retain(|page| {
                let start = (page * PAGE) as usize;
                let end = (start + PAGE as usize).min(data.len());
                if start >= end || !rng.bool() {
                    return true;
                }
                if saved.len() < end {
                    saved.resize(end, 0);
                }
                saved[start..end].copy_from_slice(&data[start..end]);
                self.counters.pages_written_back += 1;
                false
            });
        }
    }
}

/// The nodes reachable from the root: what a file system check keeps.
fn reachable(nodes: &HashMap<u64, Node>) -> HashMap<u64, Node> {
    let mut kept = HashMap::new();
    let mut todo = vec![ROOT];
    while let Some(ino) = todo.pop() {
        let Some(node) = nodes.get(&ino) else {
            continue;
        };
        if kept.insert(ino, node.clone()).is_none() {
            if let Content::Dir(entries) = &node.content {
                todo.extend(entries.values().copied());
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: (u32, u32) = (0, 0);

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn contents(disk: &Disk, dir: u64, file: &str) -> Option<Vec<u8>> {
        let ino = disk.lookup(dir, name(file)).ok()?;
        Some(disk.read(ino, 0, usize::MAX).ok()?.to_vec())
    }

    #[test]
    fn unsynced_data_is_lost_and_synced_data_kept() {
        let mut disk = Disk::new();
        let f = disk.create(ROOT, name("f"), Kind::File, 0o644, ME).unwrap();
        disk.sync_dir(ROOT).unwrap();
        disk.write(f, 0, b"synced").unwrap();
        disk.sync_file(f).unwrap();
        disk.write(f, 6, b" and not").unwrap();
        disk.write(f, 0, b"SYNCED").unwrap();
        assert_eq!(contents(&disk, ROOT, "f").unwrap(), b"SYNCED and not");
        disk.cut(None);
        assert_eq!(contents(&disk, ROOT, "f").unwrap(), b"synced");
        assert_eq!(disk.counters.cuts, 1);
        assert_eq!(disk.counters.pages_lost, 1);
    }

    #[test]
    fn a_new_file_needs_its_directory_synced() {
        let mut disk = Disk::new();
        let f = disk.create(ROOT, name("f"), Kind::File, 0o644, ME).unwrap();
        disk.write(f, 0, b"data").unwrap();
        disk.sync_file(f).unwrap();
        disk.cut(None);
        assert_eq!(
            contents(&disk, ROOT, "f"),
            None,
            "the entry was never synced"
        );

        let f = disk.create(ROOT, name("g"), Kind::File, 0o644, ME).unwrap();
        disk.write(f, 0, b"data").unwrap();
        disk.sync_dir(ROOT).unwrap();
        disk.cut(None);
        assert_eq!(
            contents(&disk, ROOT, "g").unwrap(),
            b"",
            "the entry is durable, the data was never synced"
        );
    }

    #[test]
    fn rename_and_remove_are_undone_without_a_directory_sync() {
        let mut disk = Disk::new();
        let d = disk.create(ROOT, name("d"), Kind::Dir, 0o755, ME).unwrap();
        let old = disk.create(d, name("old"), Kind::File, 0o644, ME).unwrap();
        disk.write(old, 0, b"old").unwrap();
        disk.sync_file(old).unwrap();
        disk.sync_dir(d).unwrap();
        disk.sync_dir(ROOT).unwrap();
        let tmp = disk.create(d, name("tmp"), Kind::File, 0o644, ME).unwrap();
        disk.write(tmp, 0, b"new").unwrap();
        disk.sync_file(tmp).unwrap();
        disk.rename(d, name("tmp"), d, name("old"), false).unwrap();
        assert_eq!(contents(&disk, d, "old").unwrap(), b"new");
        disk.cut(None);
        assert_eq!(contents(&disk, d, "old").unwrap(), b"old");
        assert_eq!(contents(&disk, d, "tmp"), None);

        let tmp = disk.create(d, name("tmp"), Kind::File, 0o644, ME).unwrap();
        disk.write(tmp, 0, b"new").unwrap();
        disk.sync_file(tmp).unwrap();
        disk.rename(d, name("tmp"), d, name("old"), false).unwrap();
        disk.sync_dir(d).unwrap();
        disk.remove(d, name("old"), false).unwrap();
        disk.cut(None);
        assert_eq!(contents(&disk, d, "old").unwrap(), b"new");
        assert_eq!(disk.list(d).unwrap().len(), 1);
    }

    #[test]
    fn a_torn_cut_keeps_some_unsynced_pages_and_drops_the_rest() {
        let mut disk = Disk::new();
        let f = disk.create(ROOT, name("f"), Kind::File, 0o644, ME).unwrap();
        disk.sync_dir(ROOT).unwrap();
        disk.sync_file(f).unwrap();
        disk.write(f, 0, &[1; 64 * PAGE as usize]).unwrap();
        disk.cut(Some(&mut fastrand::Rng::with_seed(7)));
        let data = contents(&disk, ROOT, "f").unwrap();
        let kept = data.chunks(PAGE as usize).filter(|p| p[0] == 1).count() as u64;
        assert!(0 < kept && kept < 64, "{kept} of 64 pages kept");
        assert_eq!(disk.counters.pages_written_back, kept);
        assert_eq!(disk.counters.pages_lost, 64 - kept);
    }

    #[test]
    fn a_truncate_then_extend_is_synced_as_zeros() {
        let mut disk = Disk::new();
        let f = disk.create(ROOT, name("f"), Kind::File, 0o644, ME).unwrap();
        disk.sync_dir(ROOT).unwrap();
        disk.write(f, 0, &[7; 10_000]).unwrap();
        disk.sync_file(f).unwrap();
        disk.set_len(f, 10).unwrap();
        disk.set_len(f, 10_000).unwrap();
        disk.sync_file(f).unwrap();
        disk.cut(None);
        let data = contents(&disk, ROOT, "f").unwrap();
        assert_eq!(data.len(), 10_000);
        assert!(data[10..].iter().all(|b| *b == 0));
    }

    #[test]
    fn directories_refuse_what_posix_refuses() {
        let mut disk = Disk::new();
        let d = disk.create(ROOT, name("d"), Kind::Dir, 0o755, ME).unwrap();
        disk.create(d, name("f"), Kind::File, 0o644, ME).unwrap();
        assert_eq!(
            disk.create(d, name("f"), Kind::File, 0o644, ME),
            Err(libc::EEXIST)
        );
        assert_eq!(disk.remove(ROOT, name("d"), true), Err(libc::ENOTEMPTY));
        assert_eq!(disk.remove(ROOT, name("d"), false), Err(libc::EISDIR));
        assert_eq!(disk.remove(d, name("f"), true), Err(libc::ENOTDIR));
        assert_eq!(
            disk.rename(d, name("f"), ROOT, name("d"), false),
            Err(libc::EISDIR)
        );
        disk.create(ROOT, name("g"), Kind::File, 0o644, ME).unwrap();
        assert_eq!(
            disk.rename(d, name("f"), ROOT, name("g"), true),
            Err(libc::EEXIST)
        );
    }
}
