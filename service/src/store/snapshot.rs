//! The on-disk snapshot format shared by the backends: one file per snapshot; a first
//! line with the [`Preamble`] (state that is not key-value data: retired ids, leases),
//! then one JSON array per key: `["key","value",create_revision,mod_revision,version,
//! lease]`. A line of two elements (a snapshot from before revisions) reads as a key
//! with revisions 0, version 1 and no lease.
//!
//! Snapshots are streamed to and from files, never collected in memory, so a node can
//! snapshot and install data sets larger than its RAM.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use crate::types::typ::{LogId, SnapshotMeta};
use crate::types::{KeyMeta, Lease, Record};

/// The data of one snapshot: an open file positioned at its start.
pub type SnapshotFile = File;

const EXTENSION: &str = "snap";

/// State machine state kept in a snapshot besides the key-value pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Preamble {
    /// Ids of nodes removed from the cluster; they are never accepted again.
    pub retired_node_ids: BTreeSet<u64>,
    /// The leases; their keys name them in their own lines.
    #[serde(default)]
    pub leases: Vec<Lease>,
}

/// The current snapshot as a backend records it: what it contains and which file in
/// the snapshot dir holds it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SnapshotRecord {
    pub meta: SnapshotMeta,
    pub file_id: String,
}

impl SnapshotRecord {
    /// Opens the recorded snapshot in `dir`; `None` when its file is gone (a data dir
    /// that was wiped), so openraft builds a new one.
    pub fn open(self, dir: &Path) -> io::Result<Option<crate::types::typ::Snapshot<SnapshotFile>>> {
        match File::open(snapshot_path(dir, &self.file_id)) {
            Ok(file) => Ok(Some(crate::types::typ::Snapshot {
                meta: self.meta,
                snapshot: file,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A snapshot file name: the last included log id plus the build time, so two snapshots
/// at the same log id never share a file.
pub fn snapshot_file_id(last_applied: Option<&LogId>) -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default();
    match last_applied {
        Some(id) => format!("{}-{}-{micros}", id.committed_leader_id(), id.index),
        None => format!("empty-{micros}"),
    }
}

/// Path of the finished snapshot `id` in `dir`.
pub fn snapshot_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.{EXTENSION}"))
}

/// Writes a snapshot file; it becomes visible under its final name only once complete
/// and synced, so a crash mid-way never leaves a truncated snapshot behind.
pub struct SnapshotWriter {
    dir: PathBuf,
    id: String,
    tmp_path: PathBuf,
    out: BufWriter<File>,
}

impl SnapshotWriter {
    /// Starts snapshot `id` in `dir`. `preamble` is `None` when the whole content,
    /// preamble included, will be copied from another snapshot.
    pub fn create(dir: &Path, id: &str, preamble: Option<&Preamble>) -> io::Result<Self> {
        super::create_dir_durably(dir)?;
        let tmp_path = dir.join(format!("{id}.{EXTENSION}.tmp"));
        let mut out = BufWriter::new(File::create(&tmp_path)?);
        if let Some(preamble) = preamble {
            serde_json::to_writer(&mut out, preamble)?;
            out.write_all(b"\n")?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            id: id.to_owned(),
            tmp_path,
            out,
        })
    }

    pub fn write_record(&mut self, key: &str, record: &Record) -> io::Result<()> {
        let m = &record.meta;
        let line = (
            key,
            &record.value,
            m.create_revision,
            m.mod_revision,
            m.version,
            m.lease,
        );
        serde_json::to_writer(&mut self.out, &line)?;
        self.out.write_all(b"\n")
    }

    /// Copies an existing snapshot, preamble and pairs, into this one.
    pub fn copy_from(&mut self, file: &mut File) -> io::Result<()> {
        file.rewind()?;
        io::copy(file, &mut self.out)?;
        file.rewind()?;
        Ok(())
    }

    /// Syncs the file and moves it to its final name, durably. Returns the finished
    /// snapshot, opened for reading. Older snapshots stay until the backend has
    /// committed its record of this one ([`remove_other_snapshots`]).
    pub fn finish(self) -> io::Result<File> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        let path = snapshot_path(&self.dir, &self.id);
        fs::rename(&self.tmp_path, &path)?;
        File::open(&self.dir)?.sync_all()?;
        File::open(&path)
    }
}

/// Removes the snapshot files that a failed build or install left unfinished; called,
/// with builds and installs serialised, before it is tried again.
pub fn remove_unfinished_snapshots(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".snap.tmp"))
        {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Removes snapshot files (finished or partial) other than `keep_id`'s. Called once the
/// record of `keep_id` is committed, with builds and installs serialised, so that no
/// file another operation still writes, and no file the record names, goes.
pub fn remove_other_snapshots(dir: &Path, keep_id: &str) -> io::Result<()> {
    let keep = snapshot_path(dir, keep_id);
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let is_snapshot = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".snap") || n.ends_with(".snap.tmp"));
        if is_snapshot && path != keep {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// One line of a snapshot: the current form, or the form before revisions.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Line {
    Record(String, String, u64, u64, u64, u64),
    Pair(String, String),
}

/// Reads the records of a snapshot file one at a time.
pub struct SnapshotReader {
    lines: io::Lines<BufReader<File>>,
}

impl SnapshotReader {
    /// Opens a snapshot: returns its preamble and a reader of its pairs.
    pub fn new(mut file: File) -> io::Result<(Preamble, Self)> {
        file.rewind()?;
        let mut lines = BufReader::new(file).lines();
        let first = lines
            .next()
            .ok_or_else(|| corrupt("empty snapshot file".into()))??;
        let preamble = serde_json::from_str(&first)
            .map_err(|e| corrupt(format!("bad snapshot preamble: {e}")))?;
        Ok((preamble, Self { lines }))
    }
}

fn corrupt(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl Iterator for SnapshotReader {
    type Item = io::Result<(String, Record)>;

    fn next(&mut self) -> Option<Self::Item> {
        let line = match self.lines.next()? {
            Ok(line) => line,
            Err(e) => return Some(Err(e)),
        };
        let line = serde_json::from_str(&line).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("corrupt snapshot line: {e}"),
            )
        });
        Some(line.map(|line| match line {
            Line::Record(key, value, create_revision, mod_revision, version, lease) => (
                key,
                Record {
                    value,
                    meta: KeyMeta {
                        create_revision,
                        mod_revision,
                        version,
                        lease,
                    },
                },
            ),
            Line::Pair(key, value) => (
                key,
                Record {
                    value,
                    meta: KeyMeta {
                        version: 1,
                        ..KeyMeta::default()
                    },
                },
            ),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_and_older_snapshots_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SnapshotWriter::create(dir.path(), "old", Some(&Preamble::default())).unwrap();
        w.write_record("a", &record("1", 0)).unwrap();
        w.finish().unwrap();

        let preamble = Preamble {
            retired_node_ids: BTreeSet::from([2, 5]),
            leases: vec![Lease {
                id: 4,
                ttl_seconds: 10,
                renewed: 6,
            }],
        };
        let mut w = SnapshotWriter::create(dir.path(), "new", Some(&preamble)).unwrap();
        w.write_record("a/b", &record("line\nbreak", 0)).unwrap();
        w.write_record("ключ", &record("\"quoted\"", 4)).unwrap();
        let file = w.finish().unwrap();
        assert!(
            snapshot_path(dir.path(), "old").exists(),
            "kept until recorded"
        );
        remove_other_snapshots(dir.path(), "new").unwrap();

        let (read_preamble, reader) = SnapshotReader::new(file).unwrap();
        assert_eq!(read_preamble, preamble);
        let pairs: Vec<_> = reader.collect::<io::Result<_>>().unwrap();
        assert_eq!(
            pairs,
            vec![
                ("a/b".to_string(), record("line\nbreak", 0)),
                ("ключ".to_string(), record("\"quoted\"", 4))
            ]
        );
        assert!(!snapshot_path(dir.path(), "old").exists());
        assert!(snapshot_path(dir.path(), "new").exists());
    }

    fn record(value: &str, lease: u64) -> Record {
        Record {
            value: value.into(),
            meta: KeyMeta {
                create_revision: 3,
                mod_revision: 9,
                version: 2,
                lease,
            },
        }
    }

    #[test]
    fn a_snapshot_from_before_revisions_still_installs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.snap");
        fs::write(&path, "{\"retired_node_ids\":[3]}\n[\"k\",\"v\"]\n").unwrap();
        let (preamble, reader) = SnapshotReader::new(File::open(&path).unwrap()).unwrap();
        assert!(preamble.leases.is_empty());
        let records: Vec<_> = reader.collect::<io::Result<_>>().unwrap();
        assert_eq!(records[0].1.value, "v");
        assert_eq!(records[0].1.meta.version, 1);
    }

    #[test]
    fn corrupt_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.snap");
        fs::write(&path, "{\"retired_node_ids\":[]}\nnot json\n").unwrap();
        let (_, mut reader) = SnapshotReader::new(File::open(&path).unwrap()).unwrap();
        assert!(reader.next().unwrap().is_err());
        fs::write(&path, "").unwrap();
        assert!(SnapshotReader::new(File::open(&path).unwrap()).is_err());
    }
}
