//! `--preload N`: writes keys `bench-0` to `bench-<N-1>` before the run, on the
//! workers' own clients (one connection each, reused for every request),
//! `--connections` requests in flight, and shows its progress on stderr about once a
//! second. Each request writes `--preload-batch` consecutive keys in one transaction
//! (kvstore's `POST /txn`, etcd's `/v3/kv/txn`), or is a plain `PUT` with a batch of 1.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde_json::{json, Value};

use crate::{one_op, ops, Args, Target};

/// Attempts at each batch before its keys count as failed.
const ATTEMPTS: u32 = 3;

/// The most keys in one transaction (kvstore's and etcd's default limit).
const MAX_BATCH: u64 = 128;

/// The most value bytes in one transaction, well under etcd's default request size
/// (1.5 MiB) once in base64.
const MAX_BATCH_BYTES: u64 = 512 * 1024;

/// Keys per request: `--preload-batch`, at most [`MAX_BATCH`] and, for large values,
/// fewer so that a request holds at most [`MAX_BATCH_BYTES`] of values.
pub fn batch_size(asked: u64, max_value_size: usize) -> u64 {
    let by_bytes = MAX_BATCH_BYTES / (max_value_size as u64).max(1);
    asked.min(MAX_BATCH).min(by_bytes).max(1)
}

/// What the preload did.
#[derive(Debug)]
pub struct Preloaded {
    /// Keys asked for.
    pub keys: u64,
    /// Keys per request.
    pub batch: u64,
    /// Keys written.
    pub written: u64,
    pub seconds: f64,
    /// Failed attempts by error code (retried up to [`ATTEMPTS`] times each).
    pub errors: BTreeMap<String, u64>,
}

impl Preloaded {
    /// Keys written a second.
    pub fn rate(&self) -> f64 {
        self.written as f64 / self.seconds.max(1e-9)
    }

    /// Keys not written after every attempt.
    pub fn failed(&self) -> u64 {
        self.keys - self.written
    }

    pub fn json(&self) -> Value {
        json!({
            "keys": self.keys,
            "batch": self.batch,
            "written": self.written,
            "seconds": self.seconds,
            "rate": self.rate(),
            "errors": self.errors,
        })
    }

    pub fn text(&self) -> String {
        let mut line = format!(
            "preload: {} keys in {:.1}s ({:.0} keys/s, {} a request)",
            self.written,
            self.seconds,
            self.rate(),
            self.batch
        );
        if self.failed() > 0 {
            line += &format!("; {} keys NOT written", self.failed());
        }
        if !self.errors.is_empty() {
            line += &format!("; errors {:?}", self.errors);
        }
        line
    }
}

/// Writes the keys `0..args.preload` with one task per client.
pub async fn run(clients: &[reqwest::Client], args: &Arc<Args>) -> Preloaded {
    let keys = args.preload;
    let batch = batch_size(args.preload_batch, args.value_size.max);
    let next = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(id, client)| {
            let (client, args) = (client.clone(), args.clone());
            let (next, written) = (next.clone(), written.clone());
            tokio::spawn(async move {
                let url = args.urls[id % args.urls.len()]
                    .trim_end_matches('/')
                    .to_string();
                let value = "v".repeat(args.value_size.max);
                let mut rng = SmallRng::seed_from_u64(0x5EED ^ id as u64);
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                loop {
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    if first >= keys {
                        return errors;
                    }
                    let pairs: Vec<(String, &str)> = (first..(first + batch).min(keys))
                        .map(|i| {
                            let key = format!("{}{i}", ops::KEY_PREFIX);
                            (key, &value[..args.value_size.pick(&mut rng)])
                        })
                        .collect();
                    for attempt in 1..=ATTEMPTS {
                        let result = match &pairs[..] {
                            [(key, value)] => one_op(&client, &args, &url, key, value, true).await,
                            _ => {
                                let etcd = args.target == Target::Etcd;
                                ops::put_many(&client, &url, etcd, &pairs).await
                            }
                        };
                        match result {
                            Ok(()) => {
                                written.fetch_add(pairs.len() as u64, Ordering::Relaxed);
                                break;
                            }
                            Err(code) => {
                                *errors.entry(code).or_default() += 1;
                                if attempt < ATTEMPTS {
                                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                                }
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let progress = {
        let written = written.clone();
        tokio::spawn(async move {
            let second = Duration::from_secs(1);
            let mut tick = tokio::time::interval_at((started + second).into(), second);
            let mut before = 0;
            loop {
                tick.tick().await;
                let done = written.load(Ordering::Relaxed);
                eprintln!(
                    "preload: {done}/{keys} keys ({:.0}%), {} keys/s",
                    done as f64 * 100.0 / keys as f64,
                    done - before
                );
                before = done;
            }
        })
    };
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for task in tasks {
        for (code, n) in task.await.expect("preload task") {
            *errors.entry(code).or_default() += n;
        }
    }
    progress.abort();
    let preloaded = Preloaded {
        keys,
        batch,
        written: written.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        errors,
    };
    eprintln!("{}", preloaded.text());
    preloaded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_stay_within_the_transaction_limits() {
        assert_eq!(batch_size(100, 100), 100);
        assert_eq!(batch_size(1000, 100), MAX_BATCH);
        assert_eq!(batch_size(0, 100), 1);
        assert_eq!(batch_size(100, 64 * 1024), 8);
        assert_eq!(batch_size(100, 1 << 20), 1);
    }
}
