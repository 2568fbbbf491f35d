//! Leases across real processes (issue #19): a lock built on `POST /txn` and a lease
//! moves to the next holder only once the holder's lease has run out, with the
//! holder's node stalled; and a thousand keys on a hundred leases expire on time on
//! every node, through a leader's death, and never come back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use crate::others;
use crate::support::harness::Cluster;
use crate::support::{eventually, get_json};

/// The longest a follower waits for its leader before it starts an election, as the
/// harness sets it up (`raft.election_timeout` 500 ms; openraft draws each timeout
/// between it and twice it). A new leader also gives every lease this long more
/// before it expires any.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(1);
/// Room for polling, the expiry's commit and the client's next attempt.
const SLACK: Duration = Duration::from_secs(1);

async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    let mut request = client.post(url);
    if let Some(body) = body {
        request = request.json(body);
    }
    let resp = request.send().await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.json().await.ok()?;
    Some((status, body))
}

/// Grants a lease of `ttl_seconds` through node `id` (retried while a leader change
/// answers 503) and returns its id.
async fn grant(cluster: &Cluster, id: u64, ttl_seconds: u64) -> u64 {
    let url = cluster.url(id, "/leases");
    let body = json!({ "ttl_seconds": ttl_seconds });
    eventually(
        Duration::from_secs(15),
        "POST /leases to answer 201",
        || async {
            match post_json(&cluster.client, &url, Some(&body)).await {
                Some((201, body)) => body["id"].as_u64(),
                _ => None,
            }
        },
    )
    .await
}

async fn keepalive(cluster: &Cluster, id: u64, lease: u64) -> Option<(u16, Value)> {
    let url = cluster.url(id, &format!("/leases/{lease}/keepalive"));
    post_json(&cluster.client, &url, None).await
}

/// The transaction that takes the lock: create `lock` only if it does not exist,
/// attached to `lease`; otherwise read who holds it.
fn lock_txn(holder: &str, lease: u64) -> Value {
    json!({
        "compare": [{"key": "lock", "target": "create_revision", "op": "=", "value": 0}],
        "success": [{"put": {"key": "lock", "value": holder, "lease": lease}}],
        "failure": [{"get": {"key": "lock"}}],
    })
}

async fn try_lock(cluster: &Cluster, id: u64, holder: &str, lease: u64) -> Option<(u16, Value)> {
    let url = cluster.url(id, "/txn");
    post_json(&cluster.client, &url, Some(&lock_txn(holder, lease))).await
}

/// One of B's attempts to take the lock and its answer (`None`: no HTTP answer).
#[derive(Debug)]
struct Attempt {
    sent: Instant,
    answered: Instant,
    answer: Option<(u16, Value)>,
}

impl Attempt {
    fn took_lock(&self) -> bool {
        matches!(&self.answer, Some((200, body)) if body["succeeded"] == true)
    }
}

/// A keepalive A sent and its answer (`None`: no HTTP answer).
struct Renewal {
    sent: Instant,
    answered: Instant,
    answer: Option<(u16, Value)>,
}

/// Holder A takes the lock through node X with a 2 s lease and keeps it alive; X is
/// stalled (SIGSTOP) right after a keepalive was acknowledged, while holder B keeps
/// trying through another node. B must get the lock only once A's lease has run out
/// as A counts it, and within TTL + election timeout + slack of A's last keepalive.
async fn a_lock_moves_only_once_the_holders_lease_ran_out(stall_leader: bool) {
    let case = if stall_leader { "leader" } else { "follower" };
    let all = [1, 2, 3];
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(&all, Duration::from_secs(5)).await;
    let (x, y) = if stall_leader {
        (leader, others(&all, leader)[0])
    } else {
        let followers = others(&all, leader);
        (followers[0], followers[1])
    };
    let ttl = Duration::from_secs(2);
    let lease_a = grant(&cluster, x, ttl.as_secs()).await;
    let lease_b = grant(&cluster, y, 60).await;
    let (code, body) = try_lock(&cluster, x, "A", lease_a)
        .await
        .expect("an answer");
    assert_eq!((code, &body["succeeded"]), (200, &json!(true)), "{body}");

    // A keeps its lease alive through X, a third of the TTL apart.
    let mut renewals: Vec<Renewal> = Vec::new();
    for i in 0..3 {
        tokio::time::sleep(ttl / 3).await;
        if i == 2 {
            // B is refused while A holds the lock.
            let (code, body) = try_lock(&cluster, y, "B", lease_b)
                .await
                .expect("an answer");
            assert_eq!((code, &body["succeeded"]), (200, &json!(false)), "{body}");
            assert_eq!(body["results"][0]["get"]["value"], "A", "{body}");
            let status = cluster.status(x).await.expect("status of X");
            let role = if stall_leader { "leader" } else { "follower" };
            assert_eq!(status["role"], role, "node {x} changed role: {status}");
        }
        let sent = Instant::now();
        let answer = keepalive(&cluster, x, lease_a).await;
        let answered = Instant::now();
        assert!(
            matches!(answer, Some((200, _))),
            "keepalive {i}: {answer:?}"
        );
        renewals.push(Renewal {
            sent,
            answered,
            answer,
        });
    }
    // X stops right after its last acknowledged keepalive: no renewal is in flight.
    cluster.pause(x);
    let (last_sent, last_ack) = {
        let last = renewals.last().unwrap();
        (last.sent, last.answered)
    };

    // A goes on sending keepalives to X, which answers none of them while stalled.
    let stop = Arc::new(AtomicBool::new(false));
    let late: Arc<Mutex<Vec<Renewal>>> = Arc::default();
    let a_keeps_trying = {
        let (client, stop, late) = (cluster.client.clone(), stop.clone(), late.clone());
        let url = cluster.url(x, &format!("/leases/{lease_a}/keepalive"));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let answer = post_json(&client, &url, None).await;
                let answered = Instant::now();
                late.lock().unwrap().push(Renewal {
                    sent,
                    answered,
                    answer,
                });
                tokio::time::sleep(ttl / 3).await;
            }
        })
    };

    // B tries through Y, a new attempt every 100 ms whatever became of the ones before
    // (an attempt forwarded to a stalled leader waits for the request timeout), until
    // one takes the lock.
    let give_up = last_ack + ttl + ELECTION_TIMEOUT + SLACK + Duration::from_secs(15);
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let mut in_flight = Vec::new();
    let took = |attempts: &[Attempt]| attempts.iter().any(|a| a.took_lock());
    while !took(&attempts.lock().unwrap()) {
        assert!(
            Instant::now() < give_up,
            "B never got the lock: {:?}",
            attempts.lock().unwrap()
        );
        let (client, attempts) = (cluster.client.clone(), attempts.clone());
        let (url, txn) = (cluster.url(y, "/txn"), lock_txn("B", lease_b));
        in_flight.push(tokio::spawn(async move {
            let sent = Instant::now();
            let answer = post_json(&client, &url, Some(&txn)).await;
            let answered = Instant::now();
            attempts.lock().unwrap().push(Attempt {
                sent,
                answered,
                answer,
            });
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for attempt in in_flight {
        tokio::time::timeout(Duration::from_secs(15), attempt)
            .await
            .expect("B's attempts end")
            .expect("B's attempt");
    }
    let attempts = std::mem::take(&mut *attempts.lock().unwrap());
    let taken: Vec<&Attempt> = attempts.iter().filter(|a| a.took_lock()).collect();
    assert_eq!(
        taken.len(),
        1,
        "B took the lock more than once: {attempts:?}"
    );
    let (b_sent, b_acquired) = (taken[0].sent, taken[0].answered);
    let b_revision = taken[0].answer.as_ref().unwrap().1["revision"]
        .as_u64()
        .expect("revision");
    let mut refused = 0;
    let mut errors = Vec::new();
    for attempt in &attempts {
        match &attempt.answer {
            Some((200, body)) if body["succeeded"] == false => {
                let holder = &body["results"][0]["get"];
                if holder["value"] == "A" {
                    assert_eq!(holder["lease"], lease_a, "{body}");
                    // A read sent after B learnt it holds the lock must see B.
                    assert!(
                        attempt.sent < b_acquired,
                        "an attempt sent {:?} after B took the lock still saw A",
                        attempt.sent - b_acquired
                    );
                    refused += 1;
                } else {
                    assert_eq!(holder["value"], "B", "{body}");
                }
            }
            Some((200, _)) => {}
            other => errors.push(format!("{:?}: {other:?}", attempt.sent - last_ack)),
        }
    }
    let waited = b_acquired - last_ack;
    eprintln!(
        "lock, {case} stalled: B got it {:?} after A sent its last acknowledged keepalive, \
         {waited:?} after it was acknowledged (B's attempt was sent {:?} after that), TTL \
         {ttl:?}, bound {:?}; {refused} refusals while stalled, other answers: {errors:?}",
        b_acquired - last_sent,
        b_sent.saturating_duration_since(last_ack),
        ttl + ELECTION_TIMEOUT + SLACK
    );
    // Safety: B holds the lock only once A's lease has run out as A counts it: from
    // when it sent its last acknowledged keepalive, the earliest moment the server can
    // have started the TTL again. (Counted from the acknowledgement, which comes after
    // the leader restarted the TTL, B may be a few milliseconds early when A's answer
    // is slow to come back through X: a client cannot rely on that.)
    assert!(
        b_acquired >= last_sent + ttl,
        "B got the lock {:?} after A sent its last acknowledged keepalive, within A's \
         TTL of {ttl:?}: two holders",
        b_acquired - last_sent
    );
    // Liveness: within TTL + election timeout + slack.
    assert!(
        waited <= ttl + ELECTION_TIMEOUT + SLACK,
        "B waited {waited:?} for the lock"
    );

    // Every running node says B holds it.
    let check_lock = |body: &Value, id: u64| {
        assert_eq!(body["value"], "B", "node {id}: {body}");
        assert_eq!(body["lease"], lease_b, "node {id}: {body}");
        assert_eq!(body["create_revision"], b_revision, "node {id}: {body}");
    };
    for id in others(&all, x) {
        let (code, body) = get_json(&cluster.client, &cluster.url(id, "/kv/lock"))
            .await
            .expect("an answer");
        assert_eq!(code, 200, "node {id}: {body}");
        check_lock(&body, id);
    }

    // X comes back, follows, and its linearizable reads agree.
    cluster.resume(x);
    cluster.wait_leader(&all, Duration::from_secs(15)).await;
    let body = eventually(
        Duration::from_secs(10),
        "a linearizable read of the lock on the resumed node",
        || async {
            let (code, body) = get_json(&cluster.client, &cluster.url(x, "/kv/lock")).await?;
            (code == 200).then_some(body)
        },
    )
    .await;
    check_lock(&body, x);
    // A's lease is gone: a keepalive through X now answers 404, never 200.
    eventually(
        Duration::from_secs(10),
        "a keepalive of A's lease through X to answer 404",
        || async {
            let (code, body) = keepalive(&cluster, x, lease_a).await?;
            assert_ne!(code, 200, "A's expired lease was kept alive: {body}");
            (code == 404 && body["code"] == "LEASE_NOT_FOUND").then_some(())
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(15), a_keeps_trying)
        .await
        .expect("A's keepalives stop")
        .expect("A's keepalive task");
    let late = std::mem::take(&mut *late.lock().unwrap());
    assert!(!late.is_empty());
    for renewal in renewals.iter().chain(&late) {
        if let Some((200, _)) = renewal.answer {
            assert!(
                renewal.sent + ttl <= b_acquired,
                "A's keepalive sent {:?} after the stall and acknowledged {:?} after it \
                 renewed the lease while B held the lock",
                renewal.sent.saturating_duration_since(last_ack),
                renewal.answered.saturating_duration_since(last_ack),
            );
        }
    }
    for id in all {
        let url = cluster.url(id, &format!("/leases/{lease_a}"));
        let (code, body) = get_json(&cluster.client, &url).await.expect("an answer");
        assert_eq!(code, 404, "node {id}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_on_a_lease_never_has_two_holders_when_the_holders_leader_stalls() {
    a_lock_moves_only_once_the_holders_lease_ran_out(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_on_a_lease_never_has_two_holders_when_the_holders_follower_stalls() {
    a_lock_moves_only_once_the_holders_lease_ran_out(false).await;
}

const LEASES: usize = 100;
const KEYS_PER_LEASE: usize = 10;

fn lease_key(lease: usize, key: usize) -> String {
    format!("exp/{lease:03}/{key}")
}

/// The lease index a key of [`lease_key`] belongs to.
fn lease_of_key(key: &str) -> usize {
    key.split('/')
        .nth(1)
        .and_then(|i| i.parse().ok())
        .expect("a lease key")
}

/// One stale listing of every lease key on one node.
struct Listing {
    sent: Instant,
    answered: Instant,
    /// Keys per lease index; `None`: no answer (the node is down).
    keys: Option<BTreeMap<usize, usize>>,
}

/// How many lease keys node `id` has (a stale count: the store counts them without
/// loading them, so polling it hardly loads the node), or `None` without an answer.
async fn count_keys(client: &reqwest::Client, url: &str) -> Option<usize> {
    let (code, body) = get_json(client, url).await?;
    assert_eq!(code, 200, "{body}");
    body["count"].as_u64().map(|n| n as usize)
}

/// Node `id`'s lease keys, per lease, from its local copy.
async fn list_keys(client: &reqwest::Client, url: &str) -> Option<BTreeMap<usize, usize>> {
    let (code, body) = get_json(client, url).await?;
    assert_eq!(code, 200, "{body}");
    assert!(body["next"].is_null(), "a listing in pages: {body}");
    let mut per_lease = BTreeMap::new();
    for kv in body["kvs"].as_array().expect("kvs") {
        let key = kv["key"].as_str().expect("key");
        *per_lease.entry(lease_of_key(key)).or_insert(0) += 1;
    }
    Some(per_lease)
}

/// Looks at node `id`'s lease keys, from its local copy, over and over until `stop`:
/// counts them, and lists them when some but not all are there.
fn poll_listings(
    cluster: &Cluster,
    id: u64,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<Listing>>>, tokio::task::JoinHandle<()>) {
    let listings: Arc<Mutex<Vec<Listing>>> = Arc::default();
    let count_url = cluster.url(id, "/kv?prefix=exp/&count_only=true&consistency=stale");
    let list_url = cluster.url(
        id,
        "/kv?prefix=exp/&keys_only=true&limit=10000&consistency=stale",
    );
    let all: BTreeMap<usize, usize> = (0..LEASES).map(|i| (i, KEYS_PER_LEASE)).collect();
    let (client, sink) = (cluster.client.clone(), listings.clone());
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let keys = match count_keys(&client, &count_url).await {
                Some(0) => Some(BTreeMap::new()),
                Some(n) if n == LEASES * KEYS_PER_LEASE => Some(all.clone()),
                Some(_) => {
                    let sent = Instant::now();
                    let keys = list_keys(&client, &list_url).await;
                    let answered = Instant::now();
                    sink.lock().unwrap().push(Listing {
                        sent,
                        answered,
                        keys,
                    });
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    continue;
                }
                None => None,
            };
            let answered = Instant::now();
            sink.lock().unwrap().push(Listing {
                sent,
                answered,
                keys,
            });
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    (listings, task)
}

/// 100 leases of a few seconds with 10 keys each; the leases are kept alive once more
/// (send and acknowledgement times recorded), then every node is polled over and over
/// until the keys are gone: each lease's keys must vanish from every node within its
/// deadline (from the keepalive's acknowledgement) + `bound`, never before its deadline
/// counted from when the keepalive was sent, all at once, and never come back. With
/// `kill_leader`, the leader is killed halfway to the deadlines and restarted; the TTL
/// is then 8 s, so that the new leader (elected 1.5-2.6 s after the kill here) leads
/// before the deadlines.
async fn many_keys_on_many_leases_expire_on_time(kill_leader: bool) {
    let all = [1u64, 2, 3];
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(&all, Duration::from_secs(5)).await;
    let ttl = Duration::from_secs(if kill_leader { 8 } else { 4 });
    let bound = if kill_leader {
        ELECTION_TIMEOUT + SLACK
    } else {
        SLACK
    };

    let setup = Instant::now();
    let via = |i: usize| all[i % all.len()];
    let leases: Vec<u64> = futures::stream::iter(0..LEASES)
        .map(|i| {
            let cluster = &cluster;
            async move { grant(cluster, via(i), ttl.as_secs()).await }
        })
        .buffered(50)
        .collect()
        .await;
    // The keys go on while the leases are kept alive, however long that takes.
    let keep = Arc::new(AtomicBool::new(true));
    let keeper = {
        let (keep, leases) = (keep.clone(), leases.clone());
        let client = cluster.client.clone();
        let urls: Vec<String> = (0..LEASES)
            .map(|i| cluster.url(via(i), &format!("/leases/{}/keepalive", leases[i])))
            .collect();
        tokio::spawn(async move {
            while keep.load(Ordering::Relaxed) {
                let rounds = urls.iter().map(|url| post_json(&client, url, None));
                for answer in futures::future::join_all(rounds).await {
                    assert!(matches!(answer, Some((200, _))), "{answer:?}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let puts = (0..LEASES).flat_map(|i| (0..KEYS_PER_LEASE).map(move |k| (i, k)));
    futures::stream::iter(puts)
        .for_each_concurrent(50, |(i, k)| {
            let cluster = &cluster;
            let lease = leases[i];
            async move {
                let key = lease_key(i, k);
                let url = cluster.url(via(i + k), &format!("/kv/{key}"));
                let body = json!({ "value": key, "lease": lease });
                eventually(
                    Duration::from_secs(15),
                    &format!("PUT {key} on lease {lease}"),
                    || async {
                        let resp = cluster.client.put(&url).json(&body).send().await.ok()?;
                        (resp.status() == 201).then_some(())
                    },
                )
                .await
            }
        })
        .await;
    // Every node has every key before the clock that matters starts.
    for id in all {
        eventually(
            Duration::from_secs(20),
            &format!("node {id} to apply the {} keys", LEASES * KEYS_PER_LEASE),
            || async {
                let url = cluster.url(id, "/kv?prefix=exp/&count_only=true&consistency=stale");
                let (code, body) = get_json(&cluster.client, &url).await?;
                (code == 200 && body["count"] == LEASES * KEYS_PER_LEASE).then_some(())
            },
        )
        .await;
    }
    keep.store(false, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(20), keeper)
        .await
        .expect("the keeper stops")
        .expect("the keeper's keepalives succeed");
    eprintln!(
        "expiry: 100 leases and 1000 keys set up in {:?}",
        setup.elapsed()
    );

    // The last keepalive of every lease, at once; each deadline counts from its own.
    let renewals: Vec<(Instant, Instant)> = futures::future::join_all((0..LEASES).map(|i| {
        let cluster = &cluster;
        let lease = leases[i];
        async move {
            let sent = Instant::now();
            let answer = keepalive(cluster, via(i), lease).await;
            assert!(
                matches!(answer, Some((200, _))),
                "lease {lease}: {answer:?}"
            );
            (sent, Instant::now())
        }
    }))
    .await;
    let first_sent = renewals.iter().map(|r| r.0).min().unwrap();
    let last_ack = renewals.iter().map(|r| r.1).max().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut polls = BTreeMap::new();
    for id in all {
        polls.insert(id, poll_listings(&cluster, id, stop.clone()));
    }

    // Halfway to the deadlines, the leader dies; it is restarted once a new one leads.
    let mut killed = None;
    if kill_leader {
        tokio::time::sleep_until((first_sent + ttl / 2).into()).await;
        let status = cluster.status(leader).await.expect("leader status");
        assert_eq!(status["role"], "leader", "{status}");
        cluster.kill(leader);
        let killed_at = Instant::now();
        let survivors = others(&all, leader);
        let new = cluster
            .wait_leader(&survivors, Duration::from_secs(5))
            .await;
        eprintln!(
            "expiry: leader {leader} killed {:?} after the keepalives; node {new} leads \
             {:?} later",
            killed_at - first_sent,
            killed_at.elapsed()
        );
        assert!(
            Instant::now() < first_sent + ttl,
            "the new leader came after the deadlines"
        );
        cluster.restart(leader);
        killed = Some((leader, killed_at));
    }

    // Until the keys are gone from every node that stayed up (or long past the bound).
    let watched: Vec<u64> = all
        .into_iter()
        .filter(|id| killed.is_none_or(|(k, _)| k != *id))
        .collect();
    let give_up = last_ack + ttl + bound + Duration::from_secs(10);
    loop {
        let gone = watched.iter().all(|id| {
            let listings = polls[id].0.lock().unwrap();
            listings
                .last()
                .and_then(|l| l.keys.as_ref())
                .is_some_and(|keys| keys.is_empty())
        });
        if gone || Instant::now() > give_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut listings = BTreeMap::new();
    for (id, (sink, task)) in polls {
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("the poller stops")
            .expect("poller task");
        listings.insert(id, std::mem::take(&mut *sink.lock().unwrap()));
    }

    // Per lease and node: never gone before the deadline (counted from the keepalive's
    // send), all ten keys at once, never back, and no read sent later than deadline +
    // bound still returns them. A lease's keys vanish between the last listing that
    // had them (sent at `seen`) and the first that did not (answered at `gone`).
    let mut worst = (Duration::ZERO, Duration::ZERO);
    let mut earliest = Duration::MAX;
    let mut slowest_listing = Duration::ZERO;
    let mut per_node = Vec::new();
    let mut too_late = Vec::new();
    for (id, listings) in &listings {
        // The killed node is judged only up to its death; after its restart it catches
        // up, and is checked below.
        let was_killed = killed.is_some_and(|(k, _)| k == *id);
        let until = match killed {
            Some((k, at)) if k == *id => at,
            _ => give_up + Duration::from_secs(60),
        };
        let mut seen: BTreeMap<usize, Instant> = BTreeMap::new();
        let mut gone: BTreeMap<usize, Instant> = BTreeMap::new();
        for listing in listings.iter().filter(|l| l.sent < until) {
            let Some(keys) = &listing.keys else {
                assert!(was_killed, "node {id} did not answer a listing");
                continue;
            };
            slowest_listing = slowest_listing.max(listing.answered - listing.sent);
            for (i, (sent, _)) in renewals.iter().enumerate() {
                let present = keys.get(&i).copied().unwrap_or(0);
                assert!(
                    present == 0 || present == KEYS_PER_LEASE,
                    "node {id} listed {present} of lease {i}'s {KEYS_PER_LEASE} keys"
                );
                if present == 0 {
                    assert!(
                        listing.answered >= *sent + ttl,
                        "node {id}: lease {i}'s keys gone {:?} after its keepalive was \
                         sent, before its TTL of {ttl:?}",
                        listing.answered - *sent
                    );
                    gone.entry(i).or_insert(listing.answered);
                } else {
                    assert!(
                        !gone.contains_key(&i),
                        "node {id}: lease {i}'s keys came back after they were gone"
                    );
                    seen.insert(i, listing.sent);
                }
            }
        }
        if was_killed {
            continue;
        }
        let mut node_worst = (Duration::ZERO, Duration::ZERO);
        for (i, (sent, acked)) in renewals.iter().enumerate() {
            let deadline = *acked + ttl;
            let gone = gone.get(&i).unwrap_or_else(|| {
                panic!(
                    "node {id}: lease {i}'s keys still there {:?} after its deadline",
                    give_up - deadline
                )
            });
            let seen = seen[&i];
            let late = (
                seen.saturating_duration_since(deadline),
                gone.saturating_duration_since(deadline),
            );
            node_worst = (node_worst.0.max(late.0), node_worst.1.max(late.1));
            earliest = earliest.min(*gone - (*sent + ttl));
            if late.0 >= bound {
                too_late.push(format!(
                    "node {id}: lease {i}'s keys still listed by a read sent {:?} after its \
                     deadline; gone from the listing answered {:?} after it",
                    late.0, late.1
                ));
            }
        }
        worst = (worst.0.max(node_worst.0), worst.1.max(node_worst.1));
        let role = if *id == leader {
            " (the first leader)"
        } else {
            ""
        };
        per_node.push(format!(
            "node {id}{role} {:?}-{:?}",
            node_worst.0, node_worst.1
        ));
    }
    eprintln!(
        "expiry{}: every lease's keys gone from every node between {:?} and {:?} after its \
         deadline at the latest (bound {bound:?}; the slowest listing took {:?}), and \
         {earliest:?} after the deadline counted from the keepalive's send at the earliest",
        if kill_leader {
            " through a leader kill"
        } else {
            ""
        },
        worst.0,
        worst.1,
        slowest_listing
    );
    eprintln!("expiry, the latest per node: {}", per_node.join(", "));
    assert!(
        too_late.is_empty(),
        "{} of {} leases and nodes past the deadline + {bound:?}, e.g. {:?}",
        too_late.len(),
        LEASES * per_node.len(),
        &too_late[..too_late.len().min(3)]
    );

    // None is returned by any node, including the restarted one once it caught up, and
    // the leases are gone everywhere.
    let leader = cluster.wait_leader(&all, Duration::from_secs(15)).await;
    let last = cluster.status(leader).await.expect("leader status")["last_log_index"]
        .as_u64()
        .expect("last_log_index");
    for id in all {
        eventually(
            Duration::from_secs(20),
            &format!("node {id} to apply index {last}"),
            || async {
                (cluster.status(id).await?["applied_index"].as_u64()? >= last).then_some(())
            },
        )
        .await;
        for consistency in ["stale", "linearizable"] {
            let url = cluster.url(id, &format!("/kv?prefix=exp/&consistency={consistency}"));
            let (code, body) = get_json(&cluster.client, &url).await.expect("an answer");
            assert_eq!(code, 200, "node {id}: {body}");
            assert_eq!(body["kvs"], json!([]), "node {id}, {consistency}");
        }
        for (i, lease) in leases.iter().enumerate() {
            let key = lease_key(i, 0);
            let url = cluster.url(id, &format!("/kv/{key}?consistency=stale"));
            let (code, body) = get_json(&cluster.client, &url).await.expect("an answer");
            assert_eq!(code, 404, "node {id}: {key}: {body}");
            let url = cluster.url(id, &format!("/leases/{lease}?consistency=stale"));
            let (code, body) = get_json(&cluster.client, &url).await.expect("an answer");
            assert_eq!(code, 404, "node {id}: lease {lease}: {body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_keys_on_a_hundred_leases_expire_on_time_on_every_node() {
    many_keys_on_many_leases_expire_on_time(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_keys_on_a_hundred_leases_expire_on_time_through_a_leader_kill() {
    many_keys_on_many_leases_expire_on_time(true).await;
}
