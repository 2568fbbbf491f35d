//! Bursts of large values against a 3-node cluster, the same on every backend: many
//! clients each PUT a 1 MiB value at the same moment, to the leader and to a follower.
//! Every write must answer 201, or 503 `OVERLOADED` at once (nothing done); the cluster
//! must keep serving small writes promptly afterwards; every stored value must read
//! back byte-equal on every node, and every refused one must not exist.

use std::time::{Duration, Instant};

use super::eventually;
use super::harness::Cluster;

/// Settings for the cluster under test: the default value limit of 1 MiB and the
/// default Raft timers (the harness's short ones suit fault tests). In a release build,
/// the default request timeout and bytes in flight (10 s, 64 MiB). A debug build moves
/// 1 MiB values at a few MiB/s on a busy machine, some 20 times slower: there, 30 s and
/// 4 MiB, so that the writes admitted can finish within the timeout too.
pub const ENV: &[(&str, &str)] = &[
    ("KV_SERVER_MAX_VALUE_BYTES", "1048576"),
    ("KV_RAFT_HEARTBEAT_TIMEOUT", "100ms"),
    ("KV_RAFT_ELECTION_TIMEOUT", "1s"),
    (
        "KV_SERVER_REQUEST_TIMEOUT",
        if cfg!(debug_assertions) { "30s" } else { "10s" },
    ),
    (
        "KV_SERVER_MAX_IN_FLIGHT_BYTES",
        if cfg!(debug_assertions) {
            "4194304"
        } else {
            "67108864"
        },
    ),
];

const REQUEST_TIMEOUT: Duration = if cfg!(debug_assertions) {
    Duration::from_secs(30)
} else {
    Duration::from_secs(10)
};
const VALUE_BYTES: usize = 1 << 20;
/// A refusal "at once" comes well before the request timeout: a write that waited on
/// a stuck replication would take all of it.
const AT_ONCE: Duration = Duration::from_secs(REQUEST_TIMEOUT.as_secs() / 2);
/// The slowest a small write may be once the bursts are over (a stuck cluster answers
/// after the request timeout).
const PROMPT: Duration = Duration::from_secs(2);

/// The value stored under `key`: a block of letters and digits from a generator seeded
/// by the key, repeated, then the key itself at the end, so that a value stored under
/// the wrong key or cut short differs. Made again for the comparison instead of kept
/// (hundreds of MiB otherwise); repeating a block keeps that cheap in a debug build.
fn value_for(key: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const BLOCK: usize = 4096;
    let mut state = key.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    }) | 1;
    let block: String = (0..BLOCK)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(ALPHABET[(state % ALPHABET.len() as u64) as usize])
        })
        .collect();
    let mut value = block.repeat(VALUE_BYTES / BLOCK);
    value.truncate(VALUE_BYTES - key.len());
    value.push_str(key);
    value
}

/// How one write of a burst answered.
struct Outcome {
    key: String,
    status: u16,
    code: Option<String>,
    retry_after: bool,
    elapsed: Duration,
}

async fn put_large(client: reqwest::Client, url: String, key: String) -> Outcome {
    // Letters and digits need no JSON escaping.
    let body = format!(r#"{{"value":"{}"}}"#, value_for(&key));
    let started = Instant::now();
    let resp = client
        .put(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let resp = match resp {
        Ok(resp) => resp,
        Err(e) => panic!("PUT {key}: no answer after {:?}: {e}", started.elapsed()),
    };
    let status = resp.status().as_u16();
    let retry_after = resp.headers().contains_key("retry-after");
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    Outcome {
        key,
        status,
        code: body["code"].as_str().map(str::to_owned),
        retry_after,
        elapsed: started.elapsed(),
    }
}

/// `count` concurrent 1 MiB writes to node `target`; returns the keys stored and the
/// keys refused, after checking that each write answered one of the two ways.
async fn burst(
    cluster: &Cluster,
    client: &reqwest::Client,
    round: usize,
    count: usize,
    target: u64,
) -> (Vec<String>, Vec<String>) {
    // A task each, so that no write waits while another one's body is made.
    let writes: Vec<_> = (0..count)
        .map(|i| {
            let key = format!("big-{round}-{i}");
            let url = cluster.url(target, &format!("/kv/{key}"));
            tokio::spawn(put_large(client.clone(), url, key))
        })
        .collect();
    let (mut stored, mut refused) = (Vec::new(), Vec::new());
    for write in writes {
        let o = write.await.expect("the write's task");
        match (o.status, o.code.as_deref()) {
            (201, _) => stored.push(o.key),
            (503, Some("OVERLOADED")) => {
                assert!(o.retry_after, "{}: OVERLOADED without Retry-After", o.key);
                assert!(
                    o.elapsed < AT_ONCE,
                    "{}: OVERLOADED only after {:?}",
                    o.key,
                    o.elapsed
                );
                refused.push(o.key);
            }
            (status, code) => panic!(
                "round {round} ({count} writes to node {target}): {} answered {status} {code:?} after {:?}",
                o.key, o.elapsed
            ),
        }
    }
    assert!(
        !stored.is_empty(),
        "round {round}: all {count} writes to node {target} were refused"
    );
    eprintln!(
        "round {round}: {count} writes to node {target}: {} stored, {} refused",
        stored.len(),
        refused.len()
    );
    (stored, refused)
}

/// The whole scenario on a started 3-node cluster (ids 1 to 3) with [`ENV`].
pub async fn bursts_of_large_values(cluster: &Cluster) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(10))
        .await;
    let follower = if leader == 1 { 2 } else { 1 };
    let (mut stored, mut refused) = (Vec::new(), Vec::new());
    for (round, (count, target)) in [(64, leader), (64, follower), (256, leader), (256, follower)]
        .into_iter()
        .enumerate()
    {
        let (s, r) = burst(cluster, &client, round, count, target).await;
        stored.extend(s);
        refused.extend(r);
    }

    // The cluster still serves small writes at its normal pace, on every node.
    for i in 0..100u64 {
        let node = 1 + i % 3;
        let started = Instant::now();
        let resp = client
            .put(cluster.url(node, &format!("/kv/small-{i}")))
            .json(&serde_json::json!({ "value": "v" }))
            .send()
            .await
            .expect("an answer to a small write");
        let (status, elapsed) = (resp.status().as_u16(), started.elapsed());
        assert_eq!(status, 201, "small write {i} to node {node}");
        assert!(
            elapsed < PROMPT,
            "small write {i} to node {node} took {elapsed:?}"
        );
    }

    for key in &stored {
        let expected = value_for(key);
        for id in [1, 2, 3] {
            let url = cluster.url(id, &format!("/kv/{key}?consistency=stale"));
            let value = eventually(
                Duration::from_secs(30),
                &format!("node {id} to hold {key}"),
                || async {
                    let resp = client.get(&url).send().await.ok()?;
                    if resp.status() != 200 {
                        return None;
                    }
                    #[derive(serde::Deserialize)]
                    struct Stored {
                        value: String,
                    }
                    Some(resp.json::<Stored>().await.ok()?.value)
                },
            )
            .await;
            assert!(
                value == expected,
                "node {id}: {key} differs from what was written"
            );
        }
    }
    // A refused write did nothing.
    for key in &refused {
        let resp = client
            .get(cluster.url(leader, &format!("/kv/{key}")))
            .send()
            .await
            .expect("an answer");
        assert_eq!(resp.status(), 404, "{key} was refused but exists");
    }
}
