//! Segment files against crashes: torn tails, corruption, reopening, and random
//! operations checked against a model.

use super::*;

fn append(log: &mut Segments, range: std::ops::Range<u64>) {
    let payloads: Vec<(u64, Vec<u8>)> = range
        .map(|i| (i, format!("entry {i}").into_bytes()))
        .collect();
    let refs: Vec<(u64, &[u8])> = payloads.iter().map(|(i, b)| (*i, b.as_slice())).collect();
    log.append(&refs).unwrap();
    log.sync().unwrap();
}

fn indexes(log: &Segments) -> Vec<u64> {
    let entries = log.read(0, u64::MAX).unwrap();
    for (index, payload) in &entries {
        assert_eq!(payload, format!("entry {index}").as_bytes());
    }
    entries.into_iter().map(|(i, _)| i).collect()
}

#[test]
fn appends_truncates_and_purges_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Segments::open(dir.path(), None).unwrap();
    append(&mut log, 1..6);
    log.truncate(4).unwrap();
    append(&mut log, 4..7);
    // Written again without a truncation first: replaces from there on.
    append(&mut log, 6..9);
    assert_eq!(indexes(&log), (1..9).collect::<Vec<_>>());
    assert_eq!(log.read(3, 5).unwrap().len(), 2);
    drop(log);
    let mut log = Segments::open(dir.path(), None).unwrap();
    assert_eq!(indexes(&log), (1..9).collect::<Vec<_>>());
    // Past the end (a snapshot installed): a new segment, the old one purged.
    log.purge(20).unwrap();
    append(&mut log, 21..23);
    drop(log);
    let log = Segments::open(dir.path(), Some(20)).unwrap();
    assert_eq!(indexes(&log), [21, 22]);
    assert_eq!(log.next_index(), Some(23));
}

#[test]
fn a_torn_write_at_the_end_is_cut_off_and_corruption_elsewhere_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Segments::open(dir.path(), None).unwrap();
    append(&mut log, 1..4);
    let path = dir.path().join(segment_name(1));
    drop(log);
    // Half a record more, as a crash during a write leaves it.
    let mut bytes = std::fs::read(&path).unwrap();
    let whole = bytes.len();
    bytes.extend_from_slice(&[7, 0, 0, 0, 1, 2]);
    std::fs::write(&path, &bytes).unwrap();
    let mut log = Segments::open(dir.path(), None).unwrap();
    assert_eq!(indexes(&log), [1, 2, 3]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), whole as u64);

    // A flipped byte in a segment that is not the last one.
    log.start_segment(4).unwrap();
    append(&mut log, 4..5);
    drop(log);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[HEADER + 1] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    let err = Segments::open(dir.path(), None).err().expect("refused");
    assert!(err.to_string().contains("checksum"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "left alone");
}

/// A flipped byte in the middle of the last segment, with fsynced records after it,
/// is corruption, not a torn write: refused, the file named with the offset, and
/// left as it is (cutting there would destroy acknowledged entries). That holds
/// for the high byte of a record's length too, which makes the record run past
/// the end of the file as an unfinished write would (a log that reads lengths
/// before checksums takes it for one and cuts the rest off).
#[test]
fn corruption_followed_by_valid_records_in_the_last_segment_is_refused() {
    for flip in [
        "a byte in the middle",
        "the high byte of entry 150's length",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Segments::open(dir.path(), None).unwrap();
        for i in 1..=300 {
            append(&mut log, i..i + 1);
        }
        let entry_150 = log.segments[&1].offsets[149] as usize;
        drop(log);
        let path = dir.path().join(segment_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        if flip == "a byte in the middle" {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x5A;
        } else {
            bytes[entry_150 + 3] ^= 0x40;
        }
        std::fs::write(&path, &bytes).unwrap();

        let err = Segments::open(dir.path(), None).err().expect(flip);
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string()),
            "{flip}: {message}"
        );
        assert!(message.contains("at offset"), "{flip}: {message}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{flip}: left alone");
    }
}

/// A torn tail is cut off only above the committed index: entries at or below it
/// were acknowledged, and a log that lost them must not start as if nothing
/// happened.
#[test]
fn a_torn_tail_is_never_cut_below_the_committed_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Segments::open(dir.path(), None).unwrap();
    append(&mut log, 1..6);
    drop(log);
    let path = dir.path().join(segment_name(1));
    let bytes = std::fs::read(&path).unwrap();
    // Entry 5's record loses its last bytes.
    let torn = &bytes[..bytes.len() - 3];
    std::fs::write(&path, torn).unwrap();

    let err = Segments::open_committed(dir.path(), None, Some(5))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("committed index 5"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), torn, "left alone");

    let log = Segments::open_committed(dir.path(), None, Some(4)).unwrap();
    assert_eq!(indexes(&log), [1, 2, 3, 4]);
}

/// What [`Segments`] must hold after a series of operations: the entries by index
/// and the purge point.
#[derive(Default)]
struct Model {
    entries: BTreeMap<u64, Vec<u8>>,
    purged: Option<u64>,
}

impl Model {
    /// Where the next append after the last entry goes.
    fn next(&self) -> u64 {
        match (self.entries.keys().next_back(), self.purged) {
            (Some(last), _) => last + 1,
            (None, Some(purged)) => purged + 1,
            (None, None) => 1,
        }
    }

    /// The lowest index an append, truncation or purge may name.
    fn lowest(&self) -> u64 {
        self.purged.map_or(1, |p| p + 1)
    }
}

/// Opens the log with segments of a few hundred bytes, so that the operations
/// below cross many segment boundaries.
fn open_small(dir: &Path, purged: Option<u64>) -> Segments {
    let mut log = Segments::open(dir, purged).unwrap();
    log.segment_bytes = 300;
    log
}

/// Random appends (some over the tail, as openraft writes again after a
/// conflict), truncations, purges (some past the end, as a snapshot install does)
/// and reopens, checked against a model after every step: the log holds exactly
/// the model's entries, in order, with their latest payloads.
#[test]
fn random_appends_truncates_purges_and_reopens_match_a_model() {
    // fsync is not under test here (the power-loss tests do that): tmpfs keeps
    // the thousands of steps fast.
    let shm = Path::new("/dev/shm");
    for seed in 0..100 {
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut model = Model::default();
        let mut log = open_small(dir.path(), None);
        for step in 0..150 {
            let next = model.next();
            let lowest = model.lowest();
            let what = match rng.u8(0..20) {
                0..=10 => {
                    // Mostly after the last entry, sometimes over the tail.
                    let first = if rng.u8(0..4) == 0 && next > lowest {
                        rng.u64(lowest..next)
                    } else {
                        next
                    };
                    let count = rng.u64(1..8);
                    let payloads: Vec<(u64, Vec<u8>)> = (first..first + count)
                        .map(|i| {
                            let size = rng.usize(0..120);
                            (i, format!("{seed}/{step}/{i}/{size:0>size$}").into_bytes())
                        })
                        .collect();
                    let refs: Vec<(u64, &[u8])> =
                        payloads.iter().map(|(i, p)| (*i, p.as_slice())).collect();
                    log.append(&refs).unwrap();
                    if rng.bool() {
                        log.sync().unwrap();
                    }
                    model.entries.split_off(&first);
                    model.entries.extend(payloads);
                    format!("append {first}..{}", first + count)
                }
                11..=13 => {
                    let from = rng.u64(lowest..=next);
                    log.truncate(from).unwrap();
                    model.entries.split_off(&from);
                    format!("truncate from {from}")
                }
                14..=16 => {
                    let upto = rng.u64(lowest.saturating_sub(1)..next + 3);
                    log.purge(upto).unwrap();
                    model.purged = model.purged.max(Some(upto));
                    model.entries = model.entries.split_off(&(upto + 1));
                    format!("purge up to {upto}")
                }
                _ => {
                    drop(log);
                    log = open_small(dir.path(), model.purged);
                    "reopen".to_string()
                }
            };
            let held = log.read(0, u64::MAX).unwrap();
            let expected: Vec<(u64, Vec<u8>)> =
                model.entries.iter().map(|(i, p)| (*i, p.clone())).collect();
            assert!(
                held == expected,
                "seed {seed}, step {step} ({what}): the log holds {:?}, the model {:?}",
                held.iter().map(|(i, _)| i).collect::<Vec<_>>(),
                model.entries.keys().collect::<Vec<_>>()
            );
            // With every held entry purged, a segment may still hold purged ones:
            // the next index is then the one after the purge point, or none.
            let next_ok = match model.entries.keys().next_back() {
                Some(last) => log.next_index() == Some(last + 1),
                None => log.next_index().is_none_or(|n| n == model.next()),
            };
            assert!(
                next_ok,
                "seed {seed}, step {step} ({what}): next index {:?}, the model's {}",
                log.next_index(),
                model.next()
            );
            if let (Some(&first), Some(&last)) = (
                model.entries.keys().next(),
                model.entries.keys().next_back(),
            ) {
                let from = rng.u64(first..=last);
                let to = rng.u64(from..=last + 1);
                let part = log.read(from, to).unwrap();
                assert_eq!(
                    part.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
                    (from..to).collect::<Vec<_>>(),
                    "seed {seed}, step {step} ({what}): read({from}, {to})"
                );
            }
        }
    }
}
