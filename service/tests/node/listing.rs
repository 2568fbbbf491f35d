//! Listing many keys from the real binary: a walk of every key, page by page, sees each
//! exactly once and in order, and the node's resident memory stays flat meanwhile (a
//! node holds one page at a time, not the range). The README's 1,000,000-key figures
//! come from `make list-walk`, the same check at full size on a release build.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{wait_ready, NodeProcess as Node};

/// Keys loaded and walked.
const KEYS: u64 = 20_000;
/// Bytes of each value: the range holds 78 MiB of values, more than the limit below,
/// so a node that kept the whole range (or its JSON) in memory would fail.
const VALUE_SIZE: usize = 4096;
/// Pairs per page: pages of 1 MiB.
const LIMIT: u64 = 256;
/// The growth of the node's resident memory during the walk must stay below this.
const MAX_RSS_GROWTH_KIB: u64 = 64 * 1024;

fn key(i: u64) -> String {
    format!("walk/{i:05}")
}

fn value(i: u64) -> String {
    format!("{i:0>width$}", width = VALUE_SIZE)
}

/// The `VmRSS` of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the node's status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// PUTs every key, 32 in flight; any answer but 201 fails the test. The bodies are
/// written by hand: this client is a debug build too, and shares the cores.
async fn load(client: &reqwest::Client, node: &Node) {
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (client, next, base) = (client.clone(), next.clone(), node.url("/kv/"));
        writers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= KEYS {
                    return;
                }
                let resp = client
                    .put(format!("{base}{}", key(i)))
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"value":"{}"}}"#, value(i)))
                    .send()
                    .await
                    .expect("an answer to a PUT");
                assert_eq!(resp.status(), 201, "PUT {}", key(i));
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("a writer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walking_every_key_sees_each_once_in_order_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let node = Node::start(dir.path(), &[]);
    wait_ready(&node, &client).await;
    let loading = Instant::now();
    load(&client, &node).await;
    eprintln!("loaded {KEYS} keys in {:?}", loading.elapsed());

    // The node's memory, sampled every 10 ms on a thread of its own while the walk runs.
    let pid = node.pid();
    let before = rss_kib(pid);
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            loop {
                peak = peak.max(rss_kib(pid));
                if done.load(Ordering::Relaxed) {
                    return peak;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let walking = Instant::now();
    let (mut seen, mut pages) = (0u64, 0u64);
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![
            ("prefix", "walk/".to_string()),
            ("limit", LIMIT.to_string()),
        ];
        if let Some(after) = &after {
            query.push(("after", after.clone()));
        }
        let resp = client
            .get(node.url("/kv"))
            .query(&query)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let page: Value = resp.json().await.unwrap();
        pages += 1;
        let kvs = page["kvs"].as_array().expect("kvs");
        assert_eq!(page["count"], kvs.len(), "page {pages}");
        for kv in kvs {
            // The walk's keys, in order, are exactly key(0), key(1), ...: a key missed,
            // repeated or out of order is a mismatch here.
            assert_eq!(
                kv["key"],
                key(seen),
                "key {seen} of the walk (page {pages})"
            );
            assert_eq!(kv["value"], value(seen), "{}", key(seen));
            seen += 1;
        }
        match page["next"].as_str() {
            Some(next) => {
                assert_eq!(
                    Some(next),
                    kvs.last().and_then(|kv| kv["key"].as_str()),
                    "page {pages}: next is not its last key"
                );
                after = Some(next.to_string());
            }
            None => break,
        }
        assert!(pages <= KEYS / LIMIT + 1, "the walk goes on past its keys");
    }
    let walk_time = walking.elapsed();
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    eprintln!(
        "walked {seen} keys in {pages} pages in {walk_time:?}; RSS {} KiB before, peak {} KiB",
        before, peak
    );
    assert_eq!(seen, KEYS, "keys walked");
    assert!(
        pages >= KEYS / LIMIT,
        "{pages} pages of at most {LIMIT} pairs"
    );
    let growth = peak.saturating_sub(before);
    assert!(
        growth < MAX_RSS_GROWTH_KIB,
        "the node's RSS grew by {growth} KiB during the walk ({before} KiB before, {peak} KiB at the peak)"
    );
}
