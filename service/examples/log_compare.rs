//! The embedded store's Raft log (segment files, `store::redb::segments`) beside
//! `raft-log`, the Raft log store by openraft's author, doing the same work on the same
//! disk. The numbers and findings in the README's "The Raft log" come from here:
//!
//! ```text
//! cargo run --release -p kvstore --example log_compare -- bench [DIR]
//! cargo run --release -p kvstore --example log_compare -- powerloss   # root, /dev/fuse
//! ```
//!
//! `bench` appends entries of the sizes the store writes (a 100-byte value, a 64 KiB
//! value) in groups, one fsync per group as the log writer does, and prints the median
//! of five rounds in entries/s and MB/s; then the time to open a 292 MB log. `DIR`
//! (default: a temporary directory under the current one) chooses the disk. Both logs
//! run with their defaults, each through its own API (no openraft, no kvstore node).
//!
//! `powerloss [CUTS]` (default 100) runs both logs on `testfs::PowerLossFs`, the same
//! seeds for both: a writer process appends and fsyncs some groups, writes some more
//! without an fsync, and is killed; then the power is cut (about half the cuts torn:
//! each unsynced page reaches the disk with even odds, in no order), the log is
//! reopened and every fsynced entry must be back. Then one byte is flipped in the
//! middle of a log whose every entry was fsynced (in a payload, in a length field), and
//! it says what opening does: refuse, or open with entries missing. Let it finish: the
//! file system is served by this process, and killing it while the writer is on the
//! disk leaves the mount hung (abort it under `/sys/fs/fuse/connections/`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvstore::store::redb::segments::Segments;
use raft_log::api::raft_log_writer::RaftLogWriter;

/// What the comparison needs of a log: append, fsync, read back.
trait Log: Sized {
    const NAME: &'static str;
    /// Opens the log in `dir` (an existing, durable directory).
    fn open(dir: &Path) -> io::Result<Self>;
    /// Appends consecutive entries; durable only after [`Log::sync`].
    fn append(&mut self, entries: &[(u64, Vec<u8>)]) -> io::Result<()>;
    /// Makes every append so far durable (one fsync).
    fn sync(&mut self) -> io::Result<()>;
    /// Hands every append so far to the file system, without an fsync.
    fn write_unsynced(&mut self) -> io::Result<()>;
    /// Every entry held, in order.
    fn entries(&self) -> io::Result<Vec<(u64, Vec<u8>)>>;
    /// The file offset of the most significant byte of the length of the payload that
    /// starts at `payload_at`.
    fn length_msb(payload_at: usize) -> usize;
}

impl Log for Segments {
    const NAME: &'static str = "segments";

    fn open(dir: &Path) -> io::Result<Self> {
        Segments::open(dir, None)
    }

    fn append(&mut self, entries: &[(u64, Vec<u8>)]) -> io::Result<()> {
        let refs: Vec<(u64, &[u8])> = entries.iter().map(|(i, p)| (*i, p.as_slice())).collect();
        Segments::append(self, &refs)
    }

    fn sync(&mut self) -> io::Result<()> {
        Segments::sync(self)
    }

    fn write_unsynced(&mut self) -> io::Result<()> {
        // `append` writes at once.
        Ok(())
    }

    fn entries(&self) -> io::Result<Vec<(u64, Vec<u8>)>> {
        self.read(0, u64::MAX)
    }

    fn length_msb(payload_at: usize) -> usize {
        // A 16-byte header before the payload; the length is its first u32, little-endian.
        payload_at - 16 + 3
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct RaftLogTypes;

impl raft_log::Types for RaftLogTypes {
    /// (term, index)
    type LogId = (u64, u64);
    type LogPayload = Vec<u8>;
    type Vote = (u64, u64);
    type Callback = SyncSender<io::Result<()>>;
    type UserData = Vec<u8>;

    fn log_index(log_id: &Self::LogId) -> u64 {
        log_id.1
    }

    fn payload_size(payload: &Self::LogPayload) -> u64 {
        payload.len() as u64
    }
}

type RaftLog = raft_log::RaftLog<RaftLogTypes>;

impl Log for RaftLog {
    const NAME: &'static str = "raft-log";

    fn open(dir: &Path) -> io::Result<Self> {
        let dir = dir
            .to_str()
            .ok_or_else(|| io::Error::other("a UTF-8 path"))?;
        RaftLog::open(Arc::new(raft_log::Config::new(dir)))
    }

    fn append(&mut self, entries: &[(u64, Vec<u8>)]) -> io::Result<()> {
        RaftLogWriter::append(self, entries.iter().map(|(i, p)| ((1, *i), p.clone())))?;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let (done, flushed) = sync_channel(1);
        self.flush(true, Some(done))?;
        flushed
            .recv()
            .map_err(|_| io::Error::other("the flush worker stopped"))?
    }

    fn write_unsynced(&mut self) -> io::Result<()> {
        self.flush(false, None)?;
        self.wait_worker_idle()
    }

    fn entries(&self) -> io::Result<Vec<(u64, Vec<u8>)>> {
        self.read(0, u64::MAX)
            .map(|e| e.map(|((_, index), payload)| (index, payload)))
            .collect()
    }

    fn length_msb(payload_at: usize) -> usize {
        // The payload is a u32 length, big-endian, then the bytes.
        payload_at - 4
    }
}

/// The payload of entry `index`: `size` bytes that name their index, so a misplaced
/// or damaged entry is seen.
fn payload(index: u64, size: usize) -> Vec<u8> {
    let tag = format!("entry {index:>12};");
    tag.bytes().cycle().take(size).collect()
}

fn group(first: u64, count: u64, size: usize) -> Vec<(u64, Vec<u8>)> {
    (first..first + count)
        .map(|i| (i, payload(i, size)))
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One append workload: `groups` groups of `per_group` entries of `size` bytes.
struct Workload {
    size: usize,
    per_group: u64,
    groups: u64,
}

const ROUNDS: usize = 5;

fn bench_one<L: Log>(base: &Path, work: &Workload) -> io::Result<(f64, f64)> {
    let mut per_second = Vec::new();
    for round in 0..ROUNDS {
        let dir = base.join(format!("{}-{}-{round}", L::NAME, work.size));
        std::fs::create_dir_all(&dir)?;
        let mut log = L::open(&dir)?;
        let groups: Vec<_> = (0..work.groups)
            .map(|g| group(g * work.per_group, work.per_group, work.size))
            .collect();
        let start = Instant::now();
        for entries in &groups {
            log.append(entries)?;
            log.sync()?;
        }
        let elapsed = start.elapsed().as_secs_f64();
        drop(log);
        std::fs::remove_dir_all(&dir)?;
        per_second.push((work.groups * work.per_group) as f64 / elapsed);
    }
    let entries = median(per_second);
    Ok((entries, entries * work.size as f64 / 1e6))
}

/// Writes a large log (`LARGE_ENTRIES` of 64 KiB, then 200,000 of 100 B), then times
/// opening it (every record is read and checked), median of three, page cache warm.
fn reopen<L: Log>(base: &Path) -> io::Result<(Duration, u64)> {
    const LARGE_ENTRIES: u64 = 4096;
    let dir = base.join(format!("{}-reopen", L::NAME));
    std::fs::create_dir_all(&dir)?;
    let mut log = L::open(&dir)?;
    for g in 0..LARGE_ENTRIES / 64 {
        log.append(&group(g * 64, 64, 64 * 1024))?;
        log.sync()?;
    }
    let small = 200_000;
    for g in 0..small / 1000 {
        log.append(&group(LARGE_ENTRIES + g * 1000, 1000, 100))?;
        log.sync()?;
    }
    drop(log);
    let bytes = dir_bytes(&dir)?;
    let mut times = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let log = L::open(&dir)?;
        times.push(start.elapsed().as_secs_f64());
        let held = log.entries()?.len() as u64;
        assert_eq!(held, LARGE_ENTRIES + small, "{} lost entries", L::NAME);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok((Duration::from_secs_f64(median(times)), bytes))
}

fn dir_bytes(dir: &Path) -> io::Result<u64> {
    std::fs::read_dir(dir)?.try_fold(0, |sum, item| Ok(sum + item?.metadata()?.len()))
}

fn bench(base: &Path) -> io::Result<()> {
    let workloads = [
        Workload {
            size: 100,
            per_group: 1,
            groups: 500,
        },
        Workload {
            size: 100,
            per_group: 64,
            groups: 200,
        },
        Workload {
            size: 100,
            per_group: 1024,
            groups: 20,
        },
        Workload {
            size: 64 * 1024,
            per_group: 1,
            groups: 200,
        },
        Workload {
            size: 64 * 1024,
            per_group: 16,
            groups: 40,
        },
    ];
    println!(
        "appends, one fsync per group, median of {ROUNDS} rounds, in {}",
        base.display()
    );
    println!(
        "{:>8} {:>6} {:>10} {:>12} {:>9}",
        "entry", "group", "log", "entries/s", "MB/s"
    );
    for work in &workloads {
        for (name, (entries, mb)) in [
            (Segments::NAME, bench_one::<Segments>(base, work)?),
            (RaftLog::NAME, bench_one::<RaftLog>(base, work)?),
        ] {
            println!(
                "{:>8} {:>6} {name:>10} {entries:>12.0} {mb:>9.1}",
                work.size, work.per_group
            );
        }
    }
    for (name, (time, bytes)) in [
        (Segments::NAME, reopen::<Segments>(base)?),
        (RaftLog::NAME, reopen::<RaftLog>(base)?),
    ] {
        println!(
            "reopen {name}: {:.0} MB, 204,096 entries, opened in {:.0} ms",
            bytes as f64 / 1e6,
            time.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// What reopening after a cut found.
#[derive(Debug, Default)]
struct CutCounts {
    cuts: usize,
    /// Reopened with every fsynced entry.
    intact: usize,
    /// Refused to open.
    refused: usize,
    /// Opened with an fsynced entry missing or wrong.
    lost: usize,
    first_refusal: Option<String>,
    /// What the disk saw: syncs, and unsynced pages dropped or written back.
    disk: Option<testfs::Counters>,
}

/// A fresh directory on the power-loss disk whose entry is durable.
fn durable_dir(fs: &testfs::PowerLossFs, name: &str) -> io::Result<PathBuf> {
    let dir = fs.path().join(name);
    std::fs::create_dir(&dir)?;
    std::fs::File::open(fs.path())?.sync_all()?;
    Ok(dir)
}

/// The writer of one round, in a child process (`log_compare write LOG DIR SEED`) so
/// that it can be killed as by the power cut, without a clean shutdown (raft-log's
/// drop fsyncs what is pending): appends and fsyncs one to five groups, says
/// `durable N` (entries below N are durable), writes one to three more groups without
/// an fsync, says `written`, and waits to be killed.
fn write_round<L: Log>(dir: &Path, seed: u64) -> io::Result<()> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut log = L::open(dir)?;
    let mut at = log.entries()?.last().map_or(0, |(i, _)| i + 1);
    for _ in 0..rng.u64(1..6) {
        let count = rng.u64(1..8);
        log.append(&group(at, count, if rng.bool() { 100 } else { 64 * 1024 }))?;
        log.sync()?;
        at += count;
    }
    println!("durable {at}");
    for _ in 0..rng.u64(1..4) {
        let count = rng.u64(1..8);
        log.append(&group(at, count, if rng.bool() { 100 } else { 64 * 1024 }))?;
        log.write_unsynced()?;
        at += count;
    }
    println!("written");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn power_cuts<L: Log>(cuts: usize) -> io::Result<CutCounts> {
    use std::io::BufRead;
    let mountpoint = tempfile::tempdir()?;
    let mut fs = testfs::PowerLossFs::mount(mountpoint.path())?;
    let mut rng = fastrand::Rng::with_seed(17);
    let mut counts = CutCounts::default();
    let mut dir = durable_dir(&fs, "log-0")?;
    while counts.cuts < cuts {
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(["write", L::NAME])
            .arg(&dir)
            .arg(rng.u64(..).to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut durable = None;
        let lines = io::BufReader::new(child.stdout.take().expect("piped")).lines();
        for line in lines {
            let line = line?;
            if let Some(n) = line.strip_prefix("durable ") {
                durable = n.parse::<u64>().ok();
            } else if line == "written" {
                break;
            }
        }
        child.kill()?;
        let status = child.wait()?;
        let durable =
            durable.ok_or_else(|| io::Error::other(format!("the writer failed: {status}")))?;
        if rng.bool() {
            fs.torn_cut(rng.u64(..))?;
        } else {
            fs.cut()?;
        }
        counts.cuts += 1;
        match L::open(&dir).and_then(|log| log.entries()) {
            Err(e) => {
                counts.refused += 1;
                counts.first_refusal.get_or_insert_with(|| e.to_string());
                // Go on in a new directory: this one stays refused.
                dir = durable_dir(&fs, &format!("log-{}", counts.cuts))?;
            }
            Ok(held) => {
                let intact = held.len() as u64 >= durable
                    && held
                        .iter()
                        .enumerate()
                        .all(|(n, (i, p))| *i == n as u64 && p[..18] == payload(*i, 18)[..]);
                if intact {
                    counts.intact += 1;
                } else {
                    counts.lost += 1;
                }
            }
        }
    }
    counts.disk = Some(fs.counters());
    Ok(counts)
}

/// The largest file in `dir`: the one data file of a small log.
fn data_file(dir: &Path) -> io::Result<PathBuf> {
    let mut files = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        files.push((item.metadata()?.len(), item.path()));
    }
    files.sort();
    files
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| io::Error::other("no file"))
}

/// 300 entries of 100 B, each fsynced; one byte of entry 150 flipped (in its payload,
/// or the high byte of its length); then opened.
fn corrupt_middle<L: Log>(in_length: bool) -> io::Result<String> {
    let dir = tempfile::tempdir()?;
    let mut log = L::open(dir.path())?;
    for i in 0..300 {
        log.append(&group(i, 1, 100))?;
        log.sync()?;
    }
    drop(log);
    let path = data_file(dir.path())?;
    let mut bytes = std::fs::read(&path)?;
    let needle = payload(150, 100);
    let payload_at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .ok_or_else(|| io::Error::other("entry 150 not found"))?;
    let at = if in_length {
        L::length_msb(payload_at)
    } else {
        payload_at + 50
    };
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes)?;
    Ok(match L::open(dir.path()).and_then(|log| log.entries()) {
        Err(e) => format!("refused: {e}"),
        Ok(held) if held.len() == 300 => "opened with all 300 entries".to_string(),
        Ok(held) => format!(
            "OPENED with {} of 300 entries: {} fsynced entries silently cut",
            held.len(),
            300 - held.len()
        ),
    })
}

fn powerloss(cuts: usize) -> io::Result<()> {
    if !testfs::PowerLossFs::supported() {
        return Err(io::Error::other(
            "the power-loss file system needs /dev/fuse and root",
        ));
    }
    for (name, counts) in [
        (Segments::NAME, power_cuts::<Segments>(cuts)?),
        (RaftLog::NAME, power_cuts::<RaftLog>(cuts)?),
    ] {
        println!(
            "{name}: {} cuts: {} reopened with every fsynced entry, {} refused to open, \
             {} lost fsynced entries",
            counts.cuts, counts.intact, counts.refused, counts.lost
        );
        if let Some(disk) = counts.disk {
            println!("  disk: {disk:?}");
        }
        if let Some(refusal) = counts.first_refusal {
            println!("  first refusal: {refusal}");
        }
    }
    for (what, in_length) in [("a payload byte", false), ("a length byte", true)] {
        println!("{what} of entry 150 of 300 flipped:");
        println!(
            "  {:>10}: {}",
            Segments::NAME,
            corrupt_middle::<Segments>(in_length)?
        );
        println!(
            "  {:>10}: {}",
            RaftLog::NAME,
            corrupt_middle::<RaftLog>(in_length)?
        );
    }
    Ok(())
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => {
            let temp;
            let base = match args.get(1) {
                Some(dir) => PathBuf::from(dir),
                None => {
                    temp = tempfile::tempdir_in(".")?;
                    temp.path().to_owned()
                }
            };
            bench(&base)
        }
        Some("write") => {
            let (Some(log), Some(dir), Some(seed)) = (
                args.get(1),
                args.get(2),
                args.get(3).and_then(|s| s.parse().ok()),
            ) else {
                return Err(io::Error::other("usage: log_compare write LOG DIR SEED"));
            };
            if log == RaftLog::NAME {
                write_round::<RaftLog>(Path::new(dir), seed)
            } else {
                write_round::<Segments>(Path::new(dir), seed)
            }
        }
        Some("powerloss") => {
            let cuts = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(100);
            powerloss(cuts)
        }
        _ => Err(io::Error::other(
            "usage: log_compare bench [DIR] | powerloss [CUTS]",
        )),
    }
}
