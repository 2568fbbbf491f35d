//! The file system mounted for real: what a process writes through the kernel is lost
//! on a cut unless it was fsynced, and the directory entry too unless its directory was.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;

use testfs::PowerLossFs;

fn sync_dir(path: &std::path::Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

#[test]
fn a_cut_keeps_exactly_what_was_synced() {
    if !PowerLossFs::available_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut fs = PowerLossFs::mount(dir.path()).unwrap();
    let root = fs.path().to_owned();

    let data = root.join("data");
    fs::create_dir(&data).unwrap();
    sync_dir(&root);
    let mut synced = File::create(data.join("synced")).unwrap();
    synced.write_all(b"kept").unwrap();
    synced.sync_data().unwrap();
    synced.write_all(b" and lost").unwrap();
    assert_eq!(fs::read(data.join("synced")).unwrap(), b"kept and lost");
    sync_dir(&data);
    let mut unsynced_entry = File::create(data.join("no-dir-sync")).unwrap();
    unsynced_entry.write_all(b"x").unwrap();
    unsynced_entry.sync_all().unwrap();
    fs::create_dir(root.join("never-synced")).unwrap();
    drop((synced, unsynced_entry));

    fs.cut().unwrap();
    assert_eq!(fs::read(data.join("synced")).unwrap(), b"kept");
    assert!(!data.join("no-dir-sync").exists());
    assert!(!root.join("never-synced").exists());
    let counters = fs.counters();
    assert_eq!(counters.cuts, 1);
    assert!(counters.pages_lost >= 1, "{counters:?}");

    // After the cut the file system works as before.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(data.join("synced"))
        .unwrap();
    file.write_all_at(b"KEPT", 0).unwrap();
    file.set_len(2).unwrap();
    file.sync_all().unwrap();
    fs::rename(data.join("synced"), data.join("renamed")).unwrap();
    sync_dir(&data);
    drop(file);
    fs.cut().unwrap();
    assert_eq!(fs::read(data.join("renamed")).unwrap(), b"KE");
    assert_eq!(fs::read_dir(&data).unwrap().count(), 1);
}

#[test]
fn a_cut_with_a_file_still_open_is_refused() {
    if !PowerLossFs::available_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut fs = PowerLossFs::mount(dir.path()).unwrap();
    let open = File::create(fs.path().join("open")).unwrap();
    let err = fs.cut().unwrap_err();
    assert!(err.to_string().contains("cannot unmount"), "{err}");
    drop(open);
    fs.cut().unwrap();
}
