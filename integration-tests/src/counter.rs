//! A counter incremented by compare-and-set: each client reads the key (its value and
//! `mod_revision`), then writes the value plus one with `If-Match: "<mod_revision>"`
//! (`If-None-Match: *` when the key is absent), and on a refusal (412) starts again
//! from the read. Every read and every conditional write becomes an [`Op`].
//!
//! The server's condition is on the key's `mod_revision`, the checker's on its value. In
//! this workload they are the same thing: every write the server applies stores the
//! value it found plus one, so the counter never holds a value twice and two reads see
//! the same value exactly when they see the same `mod_revision`. A compare-and-set op
//! therefore carries as `expected` the value that was read together with the revision
//! it was conditioned on. [`revisions_agree`] checks that assumption on the history.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use anyhow::{bail, Context, Result};

use crate::history::{Kind, Op, Outcome};
use crate::workload::send;

#[derive(Debug, Clone)]
pub struct Config {
    pub key: String,
    pub clients: u32,
    /// Increments each client must see applied.
    pub increments: u32,
    /// How long a client waits for an answer before recording the outcome unknown.
    pub request_timeout: Duration,
    /// The whole run fails if it has not finished by then.
    pub within: Duration,
}

/// What a run did: every operation (in invoke order, the final read last), and how
/// many compare-and-sets ended with an unknown outcome (each may have applied).
pub struct Outcomes {
    pub history: Vec<Op>,
    pub unknown_cas: usize,
    /// The value of the final read (`None`: the key was absent).
    pub final_value: Option<String>,
    /// Why the clients did not all finish (the history is then what they did).
    pub unfinished: Option<String>,
}

/// The value an increment of `current` writes (an absent counter counts as 0).
pub fn incremented(current: Option<&str>) -> Result<String> {
    let n: u64 = match current {
        None => 0,
        Some(v) => v
            .parse()
            .with_context(|| format!("the counter holds {v:?}, not a number"))?,
    };
    Ok((n + 1).to_string())
}

/// Runs `config.clients` clients against `nodes` (API base URLs; client `i` talks to
/// node `i % nodes.len()`), then reads the counter once more from the first node. An
/// error only when that read fails; clients that did not finish in time are reported
/// in [`Outcomes::unfinished`].
pub async fn run(nodes: &[String], config: &Config) -> Result<Outcomes> {
    let start = Instant::now();
    let deadline = start + config.within;
    let http = reqwest::Client::builder()
        .timeout(config.request_timeout)
        .connect_timeout(Duration::from_millis(500))
        .build()?;
    let finished = Arc::new(Notify::new());
    let tasks: Vec<_> = (0..config.clients)
        .map(|id| {
            let finished = finished.clone();
            let http = http.clone();
            let node = id as usize % nodes.len();
            let base = nodes[node].clone();
            let config = config.clone();
            tokio::spawn(async move {
                let at = Clock { start, deadline };
                let ops = client(id, node as u32 + 1, &http, &base, &config, at, &finished).await;
                // Whoever is backing off need not wait for a client that is done.
                finished.notify_waiters();
                ops
            })
        })
        .collect();
    let mut history = Vec::new();
    let mut failure = None;
    for task in tasks {
        let (ops, result) = task.await.context("a counter client panicked")?;
        history.extend(ops);
        if let Err(e) = result {
            failure.get_or_insert(e);
        }
    }
    let unfinished = failure.map(|e| {
        let count = |applied| {
            history
                .iter()
                .filter(|op| op.kind == Kind::Cas && op.applied == Some(applied))
                .count()
        };
        format!(
            "{e:#}; after {:?}: {} increments applied, {} refused, {} operations",
            start.elapsed(),
            count(true),
            count(false),
            history.len()
        )
    });
    let unknown_cas = history
        .iter()
        .filter(|op| op.kind == Kind::Cas && op.outcome == Outcome::Unknown)
        .count();
    history.sort_by_key(|op| (op.invoke_us, op.client));
    let last = send(
        &http,
        &nodes[0],
        Op::get(config.clients, &config.key, None, 0, 0),
        false,
        start,
    )
    .await;
    if last.outcome != Outcome::Ok {
        bail!("the final read did not succeed: {}", last.describe());
    }
    let final_value = last.value.clone();
    history.push(last);
    Ok(Outcomes {
        history,
        unknown_cas,
        final_value,
        unfinished,
    })
}

/// One client: reads and conditional writes until `config.increments` of its writes
/// were applied. Returns its operations even when it gives up.
async fn client(
    id: u32,
    node: u32,
    http: &reqwest::Client,
    base: &str,
    config: &Config,
    Clock { start, deadline }: Clock,
    finished: &Notify,
) -> (Vec<Op>, Result<()>) {
    let mut ops = Vec::new();
    let mut applied = 0;
    let mut refusals = 0u32;
    let mut rng = fastrand::Rng::with_seed(u64::from(id) + 1);
    let result = async {
        while applied < config.increments {
            if Instant::now() > deadline {
                bail!(
                    "client {id} applied only {applied} of {} increments within {:?}",
                    config.increments,
                    config.within
                );
            }
            let mut read = Op::get(id, &config.key, None, 0, 0);
            read.node = node;
            let read = send(http, base, read, false, start).await;
            ops.push(read.clone());
            if read.outcome != Outcome::Ok {
                // Refused or unanswered: nothing to compare against yet.
                pause(&mut rng).await;
                continue;
            }
            if read.value.is_some() && read.revision.is_none() {
                bail!(
                    "a read of the counter has no mod_revision: {}",
                    read.describe()
                );
            }
            let mut cas = Op::cas(
                id,
                &config.key,
                read.value.as_deref(),
                &incremented(read.value.as_deref())?,
                false,
                0,
                0,
            )
            .with_outcome(Outcome::Unknown);
            cas.node = node;
            cas.revision = read.revision;
            let cas = send(http, base, cas, false, start).await;
            ops.push(cas.clone());
            match (cas.outcome, cas.applied) {
                (Outcome::Ok, Some(true)) => {
                    applied += 1;
                    refusals = 0;
                }
                // Refused (412): another client's write came first; read again, after
                // a random back-off of up to 2^(refusals in a row) read-and-write
                // durations, at most clients^2 of them, so that increments mostly
                // come from one client at a time, the one that won going on at once,
                // instead of from all racing for each (which made two of three
                // writes fail). A client that finishes wakes the others. Unknown:
                // read again (it may still apply, and then the read shows it).
                (Outcome::Ok, _) => {
                    refusals += 1;
                    let round = cas.return_us.saturating_sub(read.invoke_us);
                    let rounds = (1u64 << refusals.min(16)).min(u64::from(config.clients).pow(2));
                    let ceiling = round.saturating_mul(rounds).min(MAX_BACK_OFF_US);
                    let back_off = Duration::from_micros(rng.u64(0..=ceiling));
                    tokio::select! {
                        _ = tokio::time::sleep(back_off) => {}
                        _ = finished.notified() => {}
                    }
                }
                (Outcome::Unknown, _) => {}
                (Outcome::Fail, _) => pause(&mut rng).await,
            }
        }
        Ok(())
    }
    .await;
    (ops, result)
}

/// The longest back-off after a 412.
const MAX_BACK_OFF_US: u64 = 10_000_000;

/// When the run started (the history's clock) and when it must have finished.
#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    deadline: Instant,
}

/// A short random pause after a refused or failed request, so that a node that is
/// briefly without a leader is not hammered.
async fn pause(rng: &mut fastrand::Rng) {
    tokio::time::sleep(Duration::from_millis(rng.u64(5..50))).await;
}

/// Checks, per key, that reads which returned the same `mod_revision` returned the
/// same value and the other way round (the assumption that lets the checker compare
/// values where the server compares revisions); the first contradiction.
pub fn revisions_agree(history: &[Op]) -> std::result::Result<(), String> {
    let mut by_revision: HashMap<(&str, u64), &Op> = HashMap::new();
    let mut by_value: BTreeMap<(&str, &str), &Op> = BTreeMap::new();
    for op in history {
        let (Kind::Get, Outcome::Ok, Some(value), Some(rev)) =
            (op.kind, op.outcome, op.value.as_deref(), op.revision)
        else {
            continue;
        };
        let key = op.key.as_str();
        let first = *by_revision.entry((key, rev)).or_insert(op);
        if first.value.as_deref() != Some(value) {
            return Err(format!(
                "two reads of revision {rev} returned different values:\n  {}\n  {}",
                first.describe(),
                op.describe()
            ));
        }
        let first = *by_value.entry((key, value)).or_insert(op);
        if first.revision != Some(rev) {
            return Err(format!(
                "two reads of {value:?} returned different revisions ({:?} and {rev}):\n  \
                 {}\n  {}",
                first.revision,
                first.describe(),
                op.describe()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    use super::*;
    use crate::checker::check;

    #[test]
    fn increments_count_from_zero() {
        assert_eq!(incremented(None).unwrap(), "1");
        assert_eq!(incremented(Some("41")).unwrap(), "42");
        assert!(incremented(Some("x")).is_err());
    }

    fn read(value: &str, rev: u64, at: u64) -> Op {
        Op {
            revision: Some(rev),
            ..Op::get(1, "c", Some(value), at, at + 1)
        }
    }

    #[test]
    fn revisions_and_values_must_agree() {
        let h = vec![read("1", 5, 0), read("2", 7, 10), read("1", 5, 20)];
        assert_eq!(revisions_agree(&h), Ok(()));
        let h = vec![read("1", 5, 0), read("2", 5, 10)];
        assert!(revisions_agree(&h).unwrap_err().contains("revision 5"));
        let h = vec![read("1", 5, 0), read("1", 6, 10)];
        assert!(revisions_agree(&h).unwrap_err().contains("\"1\""));
        // Other keys, and reads without a revision, are apart.
        let mut other = read("2", 5, 30);
        other.key = "d".into();
        let h = vec![read("1", 5, 0), other, Op::get(1, "c", Some("9"), 40, 41)];
        assert_eq!(revisions_agree(&h), Ok(()));
    }

    /// The counter workload against a simulated register: `clients` clients, each
    /// operation taking effect at one instant inside its interval; some writes end
    /// with an unknown outcome (applied or not). With `lose` one applied increment's
    /// effect is dropped, as a server that acknowledged it and lost it would.
    fn simulate(
        seed: u64,
        clients: u32,
        increments: u32,
        unknown_one_in: u8,
        lose: Option<usize>,
    ) -> Vec<Op> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut value: Option<String> = None;
        let mut history = Vec::new();
        // Per client: applied so far, the value it last read (if it is about to write).
        let mut applied = vec![0u32; clients as usize];
        let mut last_read: Vec<Option<Option<String>>> = vec![None; clients as usize];
        let mut invoked = vec![0u64; clients as usize];
        // (instant of effect, client)
        let mut queue = BinaryHeap::new();
        for c in 0..clients {
            invoked[c as usize] = rng.u64(0..100);
            queue.push(Reverse((invoked[c as usize] + rng.u64(1..100), c)));
        }
        let mut applied_total = 0;
        while let Some(Reverse((at, c))) = queue.pop() {
            let ci = c as usize;
            let returned = at + rng.u64(1..100);
            let op = match last_read[ci].take() {
                None => {
                    last_read[ci] = Some(value.clone());
                    Op::get(c, "c", value.as_deref(), invoked[ci], returned)
                }
                Some(expected) => {
                    let new = incremented(expected.as_deref()).unwrap();
                    let holds = value == expected;
                    if holds {
                        if lose != Some(applied_total) {
                            value = Some(new.clone());
                        }
                        applied_total += 1;
                        applied[ci] += 1;
                    }
                    let op = Op::cas(
                        c,
                        "c",
                        expected.as_deref(),
                        &new,
                        holds,
                        invoked[ci],
                        returned,
                    );
                    // The lost one was acknowledged; others may end unknown.
                    let lost = holds && lose == Some(applied_total - 1);
                    match rng.u8(0..unknown_one_in) {
                        0 if !lost => op.with_outcome(Outcome::Unknown),
                        _ => op,
                    }
                }
            };
            history.push(op);
            if applied[ci] < increments || last_read[ci].is_some() {
                invoked[ci] = returned + rng.u64(0..20);
                queue.push(Reverse((invoked[ci] + rng.u64(1..100), c)));
            }
        }
        let end = history.iter().map(|op| op.return_us).max().unwrap_or(0);
        history.push(Op::get(clients, "c", value.as_deref(), end + 1, end + 2));
        history.sort_by_key(|op| (op.invoke_us, op.client));
        history
    }

    #[test]
    fn simulated_counter_histories_are_accepted() {
        for seed in 0..20 {
            let h = simulate(seed, 6, 20, 40, None);
            assert!(check(&h).is_empty(), "seed {seed}: {:?}", check(&h));
        }
    }

    #[test]
    fn simulated_lost_increments_are_rejected() {
        for seed in 0..20 {
            let h = simulate(seed, 6, 20, 40, Some(seed as usize * 3));
            assert_eq!(check(&h).len(), 1, "seed {seed}: a lost increment accepted");
        }
    }

    /// The size of the real test, 16 clients of 200 increments each, with one write in
    /// 40 of unknown outcome, is checked in seconds, and so is a lost increment in its
    /// middle (the search must then rule out every order up to it).
    #[test]
    fn a_full_size_counter_history_is_checked_quickly() {
        let h = simulate(99, 16, 200, 40, None);
        assert!(h.len() > 3200 * 2, "{} operations", h.len());
        let started = Instant::now();
        let violations = check(&h);
        let took = started.elapsed();
        assert!(violations.is_empty(), "{violations:?}");
        assert!(took < Duration::from_secs(20), "accepting took {took:?}");

        let h = simulate(99, 16, 200, 40, Some(1600));
        let started = Instant::now();
        let violations = check(&h);
        let took = started.elapsed();
        assert_eq!(violations.len(), 1);
        assert!(
            violations[0].explanation.starts_with("not linearizable"),
            "{}",
            violations[0]
        );
        assert!(took < Duration::from_secs(20), "rejecting took {took:?}");
    }
}
