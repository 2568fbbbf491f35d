//! The Raft log's entries, in append-only segment files under `<data_dir>/log/`.
//!
//! A segment is named after the index of its first entry (`00000000000000000001.log`)
//! and holds consecutive entries as records: a 16-byte header (payload length as u32,
//! CRC-32C of index and payload as u32, the entry's index as u64, all little-endian)
//! and the encoded entry. Appending a group of entries is one write, and making it
//! durable one `fdatasync`: no B-tree, no page bookkeeping.
//!
//! Only the log writer thread changes the files; readers share the index of record
//! offsets behind a lock. At open, every segment is checked record by record. A torn
//! or corrupt record at the end of the last segment, with nothing valid after it, is
//! the last write group that never finished (it was never reported durable) and is cut
//! off, unless that would drop an entry at or below the stored committed index. A bad
//! record anywhere else, or one followed by a valid record (a flipped byte in the
//! middle of fsynced data, not a torn write), is an error naming the file and offset,
//! and the files are left alone: cutting there would destroy acknowledged entries.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const HEADER: usize = 16;
/// A segment is closed and a new one started once it holds this many bytes.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Records larger than this are taken for corruption (an entry carries one value).
const MAX_RECORD: usize = 1 << 30;
/// Slice-by-16: checking every record at open runs at memory speed, not byte by byte.
const CRC: crc::Crc<u32, crc::Table<16>> = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// The name of the directory under `storage.data_dir`.
pub const LOG_DIR: &str = "log";

struct Segment {
    path: PathBuf,
    file: File,
    /// Index of the first entry.
    first: u64,
    /// Offset of the record of entry `first + i`.
    offsets: Vec<u64>,
    /// Where the next record goes.
    end: u64,
}

impl Segment {
    /// One past the last index held.
    fn next_index(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }
}

/// The segment files of one log and the offsets of their records.
pub struct Segments {
    dir: PathBuf,
    /// By first index; the last one takes appends.
    segments: BTreeMap<u64, Segment>,
    /// Entries up to here are purged, though a segment may still hold some of them.
    purged: Option<u64>,
    /// [`SEGMENT_BYTES`]; tests make it small to cross many segment boundaries.
    segment_bytes: u64,
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("log segment {}: {what}", path.display()),
    )
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.log")
}

/// The first offset at or after `from` where a whole, valid record of an entry at or
/// after `lowest` starts, with that entry's index. Cheap on garbage: an offset is
/// checksummed only when its header's length fits and its index is plausible.
fn find_valid_record(bytes: &[u8], from: usize, lowest: u64) -> Option<(usize, u64)> {
    let highest = lowest.saturating_add(bytes.len() as u64 / HEADER as u64);
    (from..bytes.len().saturating_sub(HEADER - 1)).find_map(|at| {
        let header = &bytes[at..at + HEADER];
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let index = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        if index < lowest || index > highest || len > MAX_RECORD {
            return None;
        }
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let payload = bytes.get(at + HEADER..at + HEADER + len)?;
        (checksum(index, payload) == crc).then_some((at, index))
    })
}

impl Segments {
    /// Opens the log in `dir`, creating the directory if needed. Segments wholly at or
    /// below `purged` are deleted (a purge that a crash interrupted).
    pub fn open(dir: &Path, purged: Option<u64>) -> io::Result<Self> {
        Self::open_committed(dir, purged, None)
    }

    /// [`Self::open`], refusing to cut a torn tail that would take entries at or below
    /// `committed` with it.
    pub fn open_committed(
        dir: &Path,
        purged: Option<u64>,
        committed: Option<u64>,
    ) -> io::Result<Self> {
        crate::store::create_dir_durably(dir)?;
        let mut names = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let name = item?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(first) = name
                .strip_suffix(".log")
                .and_then(|n| n.parse::<u64>().ok())
            {
                names.push(first);
            }
        }
        names.sort_unstable();
        let mut segments = BTreeMap::new();
        let count = names.len();
        for (i, first) in names.into_iter().enumerate() {
            let path = dir.join(segment_name(first));
            let is_last = i + 1 == count;
            let segment = Self::load(path, first, is_last, committed)?;
            segments.insert(first, segment);
        }
        let mut log = Self {
            dir: dir.to_owned(),
            segments,
            purged: None,
            segment_bytes: SEGMENT_BYTES,
        };
        if let Some(purged) = purged {
            log.purge(purged)?;
        }
        // Whatever remains must be one run of consecutive entries.
        let mut expected: Option<u64> = None;
        for segment in log.segments.values() {
            if let Some(expected) = expected {
                if segment.first != expected {
                    return Err(corrupt(
                        &segment.path,
                        format!("starts at index {}, expected {expected}", segment.first),
                    ));
                }
            }
            expected = Some(segment.next_index());
        }
        Ok(log)
    }

    /// Reads one segment's records; cuts a torn tail off the last segment.
    fn load(
        path: PathBuf,
        first: u64,
        is_last: bool,
        committed: Option<u64>,
    ) -> io::Result<Segment> {
        let bytes = std::fs::read(&path)?;
        let mut offsets = Vec::new();
        let mut at = 0usize;
        let mut problem = None;
        while at < bytes.len() {
            let Some(header) = bytes.get(at..at + HEADER) else {
                problem = Some("a truncated record header".to_string());
                break;
            };
            let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
            let index = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
            let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
                problem = Some(format!("a truncated record at offset {at}"));
                break;
            };
            if checksum(index, payload) != crc {
                problem = Some(format!("a record failing its checksum at offset {at}"));
                break;
            }
            let expected = first + offsets.len() as u64;
            if index != expected {
                problem = Some(format!("index {index} at offset {at}, expected {expected}"));
                break;
            }
            offsets.push(at as u64);
            at += HEADER + len;
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        if let Some(problem) = problem {
            if !is_last {
                return Err(corrupt(&path, problem));
            }
            let lost = first + offsets.len() as u64;
            if let Some((offset, index)) = find_valid_record(&bytes, at + 1, lost) {
                return Err(corrupt(
                    &path,
                    format!(
                        "{problem}, followed by the valid record of entry {index} at offset \
                         {offset}: corruption inside written data, not an unfinished write; \
                         the file is left as it is (rebuild this node from its peers, see \
                         the README's Durability section)"
                    ),
                ));
            }
            if let Some(committed) = committed.filter(|c| lost <= *c) {
                return Err(corrupt(
                    &path,
                    format!(
                        "{problem}: cutting it off would drop entry {lost}, at or below the \
                         committed index {committed}; the file is left as it is (rebuild \
                         this node from its peers, see the README's Durability section)"
                    ),
                ));
            }
            tracing::warn!(path = %path.display(), %problem, "cutting off an unfinished write at the end of the log");
            file.set_len(at as u64)?;
            file.sync_data()?;
        }
        Ok(Segment {
            path,
            file,
            first,
            offsets,
            end: at as u64,
        })
    }

    /// One past the last index held (None: no entries).
    pub fn next_index(&self) -> Option<u64> {
        self.segments
            .values()
            .next_back()
            .map(Segment::next_index)
            .filter(|_| !self.is_empty())
    }

    pub fn is_empty(&self) -> bool {
        self.segments.values().all(|s| s.offsets.is_empty())
    }

    /// The payloads of the entries from `start` up to `end` (exclusive) that are held,
    /// in order, each with its index.
    pub fn read(&self, start: u64, end: u64) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let start = match self.purged {
            Some(purged) => start.max(purged + 1),
            None => start,
        };
        let mut out = Vec::new();
        let from = self
            .segments
            .range(..=start)
            .next_back()
            .map_or(start, |(first, _)| *first);
        for segment in self.segments.range(from..).map(|(_, s)| s) {
            if segment.first >= end {
                break;
            }
            let lo = start.max(segment.first);
            let hi = end.min(segment.next_index());
            for index in lo..hi {
                let i = (index - segment.first) as usize;
                let offset = segment.offsets[i];
                let record_end = segment.offsets.get(i + 1).copied().unwrap_or(segment.end);
                let mut buf = vec![0u8; (record_end - offset) as usize];
                segment.file.read_exact_at(&mut buf, offset)?;
                out.push((index, buf.split_off(HEADER)));
            }
        }
        Ok(out)
    }

    /// Writes `entries` (consecutive, by index) after the last one, starting a new
    /// segment when the current one is full or the indexes do not follow on (after a
    /// purge past the end). Not durable until [`Self::sync`].
    pub fn append(&mut self, entries: &[(u64, &[u8])]) -> io::Result<()> {
        let Some(&(first, _)) = entries.first() else {
            return Ok(());
        };
        if self.next_index().is_some_and(|next| first < next) {
            // Entries written again replace what was there from that index on.
            self.truncate(first)?;
        }
        let needs_new = match self.segments.values().next_back() {
            None => true,
            Some(last) => last.end >= self.segment_bytes || last.next_index() != first,
        };
        if needs_new {
            self.start_segment(first)?;
        }
        let segment = self.segments.values_mut().next_back().expect("a segment");
        let mut buf = Vec::with_capacity(entries.iter().map(|(_, b)| HEADER + b.len()).sum());
        let mut offsets = Vec::with_capacity(entries.len());
        for (index, payload) in entries {
            if payload.len() > MAX_RECORD {
                return Err(io::Error::other(format!(
                    "log entry {index} is {} bytes; the limit is {MAX_RECORD}",
                    payload.len()
                )));
            }
            offsets.push(segment.end + buf.len() as u64);
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&checksum(*index, payload).to_le_bytes());
            buf.extend_from_slice(&index.to_le_bytes());
            buf.extend_from_slice(payload);
        }
        if let Err(e) = segment.file.write_all_at(&buf, segment.end) {
            // A write that failed midway (a full disk) may have left part of a record:
            // cut it off, so that the next attempt, or the next start, finds the log
            // ending at its last whole record. Frees the space it took, too.
            let _ = segment.file.set_len(segment.end);
            return Err(e);
        }
        segment.end += buf.len() as u64;
        segment.offsets.extend(offsets);
        Ok(())
    }

    fn start_segment(&mut self, first: u64) -> io::Result<()> {
        if let Some(last) = self.segments.values().next_back() {
            // A closed segment is complete on disk before the next one begins.
            last.file.sync_data()?;
            if last.offsets.is_empty() {
                let first = last.first;
                self.remove(first)?;
            }
        }
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        crate::store::sync_dir(&self.dir)?;
        self.segments.insert(
            first,
            Segment {
                path,
                file,
                first,
                offsets: Vec::new(),
                end: 0,
            },
        );
        Ok(())
    }

    fn remove(&mut self, first: u64) -> io::Result<()> {
        if let Some(segment) = self.segments.remove(&first) {
            std::fs::remove_file(&segment.path)?;
        }
        Ok(())
    }

    /// Makes every write so far durable.
    pub fn sync(&self) -> io::Result<()> {
        match self.segments.values().next_back() {
            Some(last) => last.file.sync_data(),
            None => Ok(()),
        }
    }

    /// Removes the entries from `from` on, durably.
    pub fn truncate(&mut self, from: u64) -> io::Result<()> {
        // Later segments first, so that a crash midway leaves a prefix of the log.
        let whole: Vec<u64> = self.segments.range(from..).map(|(f, _)| *f).rev().collect();
        let removed = !whole.is_empty();
        for first in whole {
            self.remove(first)?;
        }
        if removed {
            crate::store::sync_dir(&self.dir)?;
        }
        if let Some(segment) = self.segments.values_mut().next_back() {
            if from < segment.next_index() {
                let i = (from - segment.first) as usize;
                segment.end = segment.offsets[i];
                segment.offsets.truncate(i);
                segment.file.set_len(segment.end)?;
                segment.file.sync_data()?;
            }
        }
        Ok(())
    }

    /// Deletes the segments holding only entries at or below `upto`.
    pub fn purge(&mut self, upto: u64) -> io::Result<()> {
        self.purged = self.purged.max(Some(upto));
        let done: Vec<u64> = self
            .segments
            .values()
            .filter(|s| s.next_index() <= upto + 1)
            .map(|s| s.first)
            .collect();
        let removed = !done.is_empty();
        for first in done {
            self.remove(first)?;
        }
        if removed {
            crate::store::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Bytes in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.end).sum()
    }
}

fn checksum(index: u64, payload: &[u8]) -> u32 {
    let mut digest = CRC.digest();
    digest.update(&index.to_le_bytes());
    digest.update(payload);
    digest.finalize()
}

#[cfg(test)]
mod tests;
