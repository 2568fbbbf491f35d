//! `--preload N`: writes keys `bench-0` to `bench-<N-1>` before the run, on the
//! workers' own clients (one connection each, reused for every key), `--connections`
//! writes in flight, and shows its progress on stderr about once a second.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde_json::{json, Value};

use crate::{one_op, ops, Args};

/// Attempts at each key before it counts as failed.
const ATTEMPTS: u32 = 3;

/// What the preload did.
#[derive(Debug)]
pub struct Preloaded {
    /// Keys asked for.
    pub keys: u64,
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
            "written": self.written,
            "seconds": self.seconds,
            "rate": self.rate(),
            "errors": self.errors,
        })
    }

    pub fn text(&self) -> String {
        let mut line = format!(
            "preload: {} keys in {:.1}s ({:.0} keys/s)",
            self.written,
            self.seconds,
            self.rate()
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
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= keys {
                        return errors;
                    }
                    let key = format!("{}{i}", ops::KEY_PREFIX);
                    let value = &value[..args.value_size.pick(&mut rng)];
                    for attempt in 1..=ATTEMPTS {
                        match one_op(&client, &args, &url, &key, value, true).await {
                            Ok(()) => {
                                written.fetch_add(1, Ordering::Relaxed);
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
        written: written.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        errors,
    };
    eprintln!("{}", preloaded.text());
    preloaded
}
