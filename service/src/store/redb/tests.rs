//! The embedded backend's own tests: openraft's storage suite on it (through the
//! wrapper, which is what speaks openraft's state machine trait), opening, reads of
//! applied writes wherever they wait, and snapshots.

use std::collections::BTreeMap;

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

use super::*;
use crate::store::contract::{ReadBackend, StateMachineBackend};
use crate::store::{LogStore, StateMachine, Store};
use crate::types::TypeConfig;

/// Each suite case gets a fresh, empty store in its own temp dir; the dir lives as
/// long as the case (the guard `G`).
struct Builder;

impl StoreBuilder<TypeConfig, LogStore<Redb>, StateMachine<Redb>, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore<Redb>, StateMachine<Redb>), StorageError<TypeConfig>>
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let disk_full = Arc::new(DiskFull::default());
        let opened = open(dir.path(), true, disk_full.clone()).expect("open store");
        let store = Store::new(opened, disk_full);
        Ok((dir, store.log_store, store.state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder).await.expect("storage suite");
}

#[test]
fn unwritable_data_dir_names_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = open(&file.join("sub"), true, Default::default())
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("storage.data_dir"), "{err}");
}

/// Opens the store in `dir` again; the previous one's log writer may still be
/// letting go of the file.
fn reopen(dir: &Path) -> Opened<Redb> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match open(dir, true, Default::default()) {
            Ok(store) => return store,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("already open"), "{e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("cannot reopen the store: {e}"),
        }
    }
}

/// Applies `entries` and checks there is one result for each.
async fn apply(sm: &mut RedbStateMachine, entries: Vec<crate::types::typ::Entry>) {
    let count = entries.len();
    let results = sm.apply(entries).await.unwrap();
    assert_eq!(results.len(), count);
}

#[tokio::test]
async fn applied_writes_are_read_back_before_and_after_they_reach_the_file() {
    use crate::store::test_entries::{delete, put};
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), true, Default::default()).unwrap();
    let sm = &mut store.state_machine;
    // In the file: a, b.
    apply(sm, vec![put(1, "a", "1"), put(2, "b", "2")]).await;
    store.reader.state.flush_all().unwrap();
    // Pending: a overwritten, b deleted, c added, d added then deleted, a missing
    // key deleted.
    apply(
        sm,
        vec![
            put(3, "a", "1b"),
            delete(4, "b"),
            put(5, "c", "3"),
            put(6, "d", "4"),
            delete(7, "d"),
            delete(8, "nope"),
        ],
    )
    .await;
    async fn check(h: &RedbHandle) {
        assert_eq!(
            h.get("a").await.unwrap().map(|r| r.value).as_deref(),
            Some("1b")
        );
        assert_eq!(h.get("b").await.unwrap(), None);
        assert_eq!(
            h.get("c").await.unwrap().map(|r| r.value).as_deref(),
            Some("3")
        );
        assert_eq!(h.get("d").await.unwrap(), None);
        assert_eq!(h.count().await.unwrap(), 2);
    }
    check(&store.reader).await;
    assert_eq!(sm.applied_state().await.unwrap().0.unwrap().index, 8);

    // A snapshot holds the pending writes too.
    let snapshot = sm.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id.unwrap().index, 8);
    let (_, pairs) = crate::store::SnapshotReader::new(snapshot.snapshot).unwrap();
    let pairs: Vec<(String, String)> = pairs
        .map(Result::unwrap)
        .map(|(k, r)| (k, r.value))
        .collect();
    assert_eq!(pairs, [("a".into(), "1b".into()), ("c".into(), "3".into())]);
    check(&store.reader).await;

    // What shutdown flushes is there after a restart.
    apply(sm, vec![put(9, "e", "5")]).await;
    store.reader.close().await.unwrap();
    drop(store);
    let store = reopen(dir.path());
    assert_eq!(
        store
            .reader
            .get("e")
            .await
            .unwrap()
            .map(|r| r.value)
            .as_deref(),
        Some("5")
    );
    assert_eq!(store.reader.count().await.unwrap(), 3);
}

#[tokio::test]
async fn a_delete_reports_whether_the_key_existed_wherever_it_is() {
    use crate::store::test_entries::{delete, put};
    use crate::store::CommandResult;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), true, Default::default()).unwrap();
    let shared = store.state_machine.shared();
    let results = |entries: Vec<_>| RedbStateMachine::apply_pending(&shared, &entries).unwrap();
    results(vec![put(1, "in-file", "x")]);
    shared.flush_all().unwrap();
    assert_eq!(
        results(vec![
            put(2, "pending", "y"),
            delete(3, "in-file"),
            delete(4, "pending"),
            delete(5, "pending"),
            delete(6, "never"),
        ]),
        [
            stored(2),
            CommandResult::Deleted {
                existed: true,
                revision: 3
            },
            CommandResult::Deleted {
                existed: true,
                revision: 4
            },
            CommandResult::Deleted {
                existed: false,
                revision: 5
            },
            CommandResult::Deleted {
                existed: false,
                revision: 6
            },
        ]
    );
}

#[test]
fn corrupt_database_file_is_reported_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    let garbage = vec![0xA5u8; 8192];
    std::fs::write(&path, &garbage).unwrap();
    let err = open(dir.path(), true, Default::default())
        .err()
        .expect("must fail");
    assert!(err.to_string().contains(DB_FILE), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        garbage,
        "file must be untouched"
    );
}

#[test]
fn a_database_file_appears_under_its_name_only_once_it_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STATE_FILE);
    // A start stopped while it makes the file: here, its tables fail to be made.
    let err = open_db(&path, |_| {
        Err(redb::TableError::TableDoesNotExist("stopped".into()))
    })
    .expect_err("must fail");
    assert!(err.to_string().contains(STATE_FILE), "{err}");
    assert!(
        !path.exists(),
        "a half-made database must not be left under the name a restart opens"
    );
    // The next start makes it, whatever the interrupted one left behind.
    std::fs::write(creating_path(&path), vec![0x5Au8; 4096]).unwrap();
    let mut opened = open(dir.path(), true, Default::default()).expect("open");
    assert!(!creating_path(&path).exists());
    assert!(path.exists());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(apply(
        &mut opened.state_machine,
        vec![crate::store::test_entries::put(1, "a", "1")],
    ));
}

/// A snapshot file at log index `index` holding `a=<a>` and `filler` more keys.
fn snapshot_at(
    dir: &Path,
    index: u64,
    a: &str,
    filler: usize,
) -> (crate::types::typ::SnapshotMeta, std::fs::File) {
    let mut writer = crate::store::SnapshotWriter::create(
        dir,
        &format!("peer-{index}"),
        Some(&Default::default()),
    )
    .unwrap();
    writer.write_record("a", &record(a)).unwrap();
    for i in 0..filler {
        writer
            .write_record(&format!("filler-{i:08}"), &record("x"))
            .unwrap();
    }
    let meta = crate::types::typ::SnapshotMeta {
        last_log_id: Some(crate::store::test_entries::put(index, "a", a).log_id),
        last_membership: Default::default(),
    };
    (meta, writer.finish().unwrap())
}

/// While a snapshot is installed, reads see what was applied before it (pending
/// writes included) or the snapshot, never the file as it was before the pending
/// writes: reads do not go backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_during_a_snapshot_install_never_go_backwards() {
    use crate::store::test_entries::put;
    let dir = tempfile::tempdir().unwrap();
    let peer = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), true, Default::default()).unwrap();
    apply(&mut store.state_machine, vec![put(1, "a", "old")]).await;
    store.reader.state.flush_all().unwrap();
    apply(&mut store.state_machine, vec![put(2, "a", "pending")]).await;
    let (meta, file) = snapshot_at(peer.path(), 3, "snapshot", 200_000);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (state, stop) = (store.reader.state.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                seen.insert(state.get("a").unwrap().map(|r| r.value).unwrap_or_default());
            }
            seen
        })
    };
    store
        .state_machine
        .install_snapshot(&meta, file)
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.join().unwrap();
    assert!(!seen.contains("old"), "a read went backwards: {seen:?}");
    assert_eq!(
        store
            .reader
            .get("a")
            .await
            .unwrap()
            .map(|r| r.value)
            .as_deref(),
        Some("snapshot")
    );
}

/// Builds and installs running at the same time both succeed, and the snapshot
/// recorded last is never older than the one installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_builds_and_installs_do_not_race() {
    use crate::store::test_entries::put;
    let dir = tempfile::tempdir().unwrap();
    let peer = tempfile::tempdir().unwrap();
    let store = open(dir.path(), true, Default::default()).unwrap();
    let mut sm = store.state_machine.clone();
    let entries: Vec<_> = (1..=20_000)
        .map(|i| put(i, &format!("k{i:06}"), "v"))
        .collect();
    apply(&mut sm, entries).await;
    for round in 0..10u64 {
        let index = 100_000 + round;
        let (meta, file) = snapshot_at(peer.path(), index, "installed", 20_000);
        let mut builder = sm.clone();
        let mut installer = sm.clone();
        let (built, installed) = tokio::join!(
            tokio::spawn(async move { builder.build_snapshot().await.map(|s| s.meta) }),
            tokio::spawn(async move { installer.install_snapshot(&meta, file).await }),
        );
        built.unwrap().expect("build");
        installed.unwrap().expect("install");
        let current = sm.current_snapshot().await.unwrap().expect("a snapshot");
        assert_eq!(
            current.meta.last_log_id.map(|id| id.index),
            Some(index),
            "round {round}: the recorded snapshot went back"
        );
    }
}

/// Every range the API could ask for, against a sorted model of the same writes.
fn check_ranges(
    got: impl Fn(&str, Option<&str>, usize) -> Vec<(String, String)>,
    model: &BTreeMap<String, String>,
) {
    let bounds = [
        "",
        "a",
        "b",
        "b0",
        "ba",
        "c",
        "d",
        "z",
        "\u{e9}",
        "\u{10ffff}",
    ];
    for start in bounds {
        for end in bounds.iter().map(|e| Some(*e)).chain([None]) {
            for limit in [0, 1, 2, 3, 100] {
                let expected: Vec<(String, String)> = model
                    .iter()
                    .filter(|(k, _)| k.as_str() >= start && end.is_none_or(|e| k.as_str() < e))
                    .take(limit)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(
                    got(start, end, limit),
                    expected,
                    "range [{start:?}, {end:?}) limit {limit}"
                );
            }
        }
    }
}

/// A range reads the file and the writes waiting in memory as one ordered view:
/// pending values replace stored ones, pending deletes hide them, and neither
/// counts toward the limit when it is hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_is_ordered_bounded_and_limited_across_file_and_memory() {
    use crate::store::test_entries::{delete, put};
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), true, Default::default()).unwrap();
    let reader = store.reader.clone();
    let read = |start: &str, end: Option<&str>, limit| {
        values(futures::executor::block_on(reader.range(start, end, limit, usize::MAX)).unwrap())
    };
    assert!(read("", None, 10).is_empty(), "an empty store");

    // In the file: a, b, b0, c, d, é.
    let stored = [
        ("a", "1"),
        ("b", "2"),
        ("b0", "3"),
        ("c", "4"),
        ("d", "5"),
        ("\u{e9}", "6"),
    ];
    let entries = stored
        .iter()
        .zip(1..)
        .map(|((k, v), i)| put(i, k, v))
        .collect();
    apply(&mut store.state_machine, entries).await;
    store.reader.state.flush_all().unwrap();
    let mut model: BTreeMap<String, String> = stored
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    check_ranges(read, &model);

    // Pending: b overwritten, c and a deleted, ba added, z added then deleted.
    apply(
        &mut store.state_machine,
        vec![
            put(7, "b", "2b"),
            delete(8, "c"),
            delete(9, "a"),
            put(10, "ba", "7"),
            put(11, "z", "8"),
            delete(12, "z"),
        ],
    )
    .await;
    model.insert("b".into(), "2b".into());
    model.remove("c");
    model.remove("a");
    model.insert("ba".into(), "7".into());
    check_ranges(read, &model);
    assert_eq!(
        read("b", Some("d"), 10),
        [
            ("b".to_string(), "2b".to_string()),
            ("b0".into(), "3".into()),
            ("ba".into(), "7".into()),
        ],
        "start inclusive, end exclusive, deleted c left out"
    );
    assert_eq!(
        read("a", Some("b0"), 1),
        [("b".to_string(), "2b".to_string())]
    );
    // A page also ends with the pair that brings its keys and values to `max_bytes`
    // (b=2b is 3 bytes, b0=3 is 3, ba=7 is 3), whether the pair is pending or stored.
    for (max_bytes, pairs) in [(1, 1), (3, 1), (4, 2), (6, 2), (7, 3)] {
        let page = futures::executor::block_on(reader.range("b", Some("d"), 10, max_bytes));
        assert_eq!(page.unwrap().len(), pairs, "max_bytes {max_bytes}");
    }
    assert!(read("d", Some("c"), 10).is_empty(), "end before start");
    assert!(read("x", Some("y"), 10).is_empty(), "nothing in between");

    check_counts(&reader, &model).await;

    // The same view once everything is in the file.
    store.reader.state.flush_all().unwrap();
    check_ranges(read, &model);
    check_counts(&reader, &model).await;
}

/// Every range's count against the model.
async fn check_counts(reader: &RedbHandle, model: &BTreeMap<String, String>) {
    let bounds = ["", "a", "b", "b0", "ba", "c", "z", "\u{e9}"];
    for start in bounds {
        for end in bounds.iter().map(|e| Some(*e)).chain([None]) {
            let expected = model
                .keys()
                .filter(|k| k.as_str() >= start && end.is_none_or(|e| k.as_str() < e))
                .count() as u64;
            assert_eq!(
                reader.count_range(start, end).await.unwrap(),
                expected,
                "count of [{start:?}, {end:?})"
            );
        }
    }
}

/// A range delete removes the keys of its range wherever they wait (the file or
/// memory), after the writes before it in the batch and before those after it, and
/// answers how many it removed; it lasts across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_delete_applies_in_log_order_across_file_and_memory() {
    use crate::store::test_entries::{delete, delete_range, put};
    use crate::store::CommandResult;
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), true, Default::default()).unwrap();
    let sm = &mut store.state_machine;
    // In the file: a, b, b/1, b/2, c.
    apply(
        sm,
        vec![
            put(1, "a", "1"),
            put(2, "b", "2"),
            put(3, "b/1", "3"),
            put(4, "b/2", "4"),
            put(5, "c", "5"),
        ],
    )
    .await;
    store.reader.state.flush_all().unwrap();
    // Pending: b/3 added, b/1 deleted, c/1 added.
    apply(
        sm,
        vec![put(6, "b/3", "6"), delete(7, "b/1"), put(8, "c/1", "7")],
    )
    .await;
    let results = sm
        .apply(vec![
            put(9, "b/4", "8"),
            delete_range(10, "b", Some("c")),
            put(11, "b/5", "9"),
            delete_range(12, "x", Some("w")),
            delete_range(13, "c", None),
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        [
            stored(9),
            // b, b/2 (file), b/3, b/4 (memory); b/1 was deleted already.
            CommandResult::DeletedRange { count: 4 },
            stored(11),
            CommandResult::DeletedRange { count: 0 },
            CommandResult::DeletedRange { count: 2 },
        ]
    );
    let expected = [
        ("a".to_string(), "1".to_string()),
        ("b/5".into(), "9".into()),
    ];
    assert_eq!(
        values(store.reader.range("", None, 100, usize::MAX).await.unwrap()),
        expected
    );
    assert_eq!(store.reader.count().await.unwrap(), 2);
    assert_eq!(store.reader.count_range("", None).await.unwrap(), 2);
    assert_eq!(sm.applied_state().await.unwrap().0.unwrap().index, 13);

    store.reader.close().await.unwrap();
    drop(store);
    let store = reopen(dir.path());
    assert_eq!(
        values(store.reader.range("", None, 100, usize::MAX).await.unwrap()),
        expected
    );
}

/// The result of a put that created its key at `index`.
fn stored(index: u64) -> crate::store::CommandResult {
    crate::store::CommandResult::Put {
        meta: crate::types::KeyMeta {
            create_revision: index,
            mod_revision: index,
            version: 1,
            lease: 0,
        },
        granted: None,
    }
}

/// A record of `value` with version 1 and no revisions (as a snapshot from before
/// revisions reads).
fn record(value: &str) -> crate::types::Record {
    crate::types::Record {
        value: value.into(),
        meta: crate::types::KeyMeta {
            version: 1,
            ..Default::default()
        },
    }
}

fn values(pairs: Vec<(String, crate::types::Record)>) -> Vec<(String, String)> {
    pairs.into_iter().map(|(k, r)| (k, r.value)).collect()
}
