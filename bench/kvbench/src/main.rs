//! `kvbench`: a closed-loop load generator for kvstore, and for etcd through its JSON
//! gateway, so both are measured by the same code with the same settings.
//!
//! Each of `--connections` workers keeps one request in flight on its own connection,
//! picks a random key from `--keys` and does a write with probability `--writes` (else a
//! read), for `--warmup` then `--duration`. Latencies after the warm-up go into an HDR
//! histogram; errors are counted by their code.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    /// kvstore's API: `PUT /kv/{key}`, `GET /kv/{key}` (linearizable).
    Kvstore,
    /// etcd v3's JSON gateway: `/v3/kv/put`, `/v3/kv/range` (linearizable).
    Etcd,
}

/// A closed-loop load generator for kvstore and etcd.
#[derive(Parser, Debug)]
#[command(name = "kvbench", version, about)]
struct Args {
    /// Base URLs of the nodes; workers are spread over them round-robin.
    #[arg(long, value_delimiter = ',', required = true)]
    urls: Vec<String>,
    /// What the URLs point at.
    #[arg(long, value_enum, default_value = "kvstore")]
    target: Target,
    /// Concurrent connections, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Share of operations that are writes, 0.0 to 1.0.
    #[arg(long, default_value_t = 1.0)]
    writes: f64,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Measured time, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured time before it, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// For https:// URLs: the CA certificates (PEM) the nodes' certificates chain to.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// A bearer token sent with every request (kvstore with `auth.tokens`).
    #[arg(long, env = "KVBENCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// One HTTP client per worker (so one connection each), with `--ca-file` and
/// `--token` applied.
fn http_client(args: &Args) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10));
    if let Some(ca_file) = &args.ca_file {
        builder =
            builder.use_preconfigured_tls(kvstore::tls::tool_client_config("--ca-file", ca_file)?);
    }
    if let Some(token) = &args.token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| anyhow::anyhow!("--token: not a valid header value"))?;
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    Ok(builder.build()?)
}

/// What one worker saw.
struct Tally {
    latencies: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    /// Successful operations over the whole run, warm-up included.
    all_ok: u64,
}

/// A small, fast, good-enough random number generator (xorshift), seeded per worker.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

async fn one_op(
    client: &reqwest::Client,
    args: &Args,
    url: &str,
    key: &str,
    value: &str,
    write: bool,
) -> Result<(), String> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let request = match (args.target, write) {
        (Target::Kvstore, true) => client
            .put(format!("{url}/kv/{key}"))
            .json(&json!({ "value": value })),
        (Target::Kvstore, false) => client.get(format!("{url}/kv/{key}")),
        (Target::Etcd, true) => client
            .post(format!("{url}/v3/kv/put"))
            .json(&json!({ "key": b64(key), "value": b64(value) })),
        (Target::Etcd, false) => client
            .post(format!("{url}/v3/kv/range"))
            .json(&json!({ "key": b64(key) })),
    };
    let resp = request.send().await.map_err(|e| {
        if e.is_timeout() {
            "TIMEOUT".to_string()
        } else {
            "CONNECTION".to_string()
        }
    })?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|_| "CONNECTION".to_string())?;
    // A missing key is a normal answer for a read.
    if status.is_success() || (!write && status == 404) {
        return Ok(());
    }
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("HTTP_{}", status.as_u16()));
    Err(code)
}

async fn worker(
    id: usize,
    client: reqwest::Client,
    args: Arc<Args>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let url = args.urls[id % args.urls.len()]
        .trim_end_matches('/')
        .to_string();
    let value = "v".repeat(args.value_size);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    let mut tally = Tally {
        latencies: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
        errors: BTreeMap::new(),
        all_ok: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        let key = format!("bench-{}", rng.next() % args.keys);
        let write = rng.unit() < args.writes;
        let started = Instant::now();
        let result = one_op(&client, &args, &url, &key, &value, write).await;
        tally.all_ok += u64::from(result.is_ok());
        if measuring.load(Ordering::Relaxed) {
            let micros = started.elapsed().as_micros().max(1) as u64;
            match result {
                Ok(()) => {
                    let _ = tally.latencies.record(micros.min(60_000_000));
                }
                Err(code) => *tally.errors.entry(code).or_default() += 1,
            }
        }
    }
    tally
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Arc::new(Args::parse());
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        match http_client(&args) {
            Ok(client) => clients.push(client),
            Err(e) => {
                eprintln!("kvbench: {e:#}");
                return ExitCode::from(2);
            }
        }
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(id, client)| {
            let (args, measuring, stop) = (args.clone(), measuring.clone(), stop.clone());
            tokio::spawn(worker(id, client, args, measuring, stop))
        })
        .collect();
    tokio::time::sleep(args.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(args.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);

    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut all_ok = 0;
    for w in workers {
        let tally = w.await.expect("worker");
        all_ok += tally.all_ok;
        latencies.add(&tally.latencies).expect("same bounds");
        for (code, n) in tally.errors {
            *errors.entry(code).or_default() += n;
        }
    }
    let ok = latencies.len();
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    let report = json!({
        "target": format!("{:?}", args.target).to_lowercase(),
        "urls": args.urls,
        "connections": args.connections,
        "writes": args.writes,
        "keys": args.keys,
        "value_size": args.value_size,
        "seconds": elapsed,
        "ok": ok,
        // Warm-up included: with the CPU time of a whole run, gives CPU per operation.
        "ok_all": all_ok,
        "throughput": ok as f64 / elapsed,
        "latency_ms": {
            "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999),
            "max": latencies.max() as f64 / 1000.0,
        },
        "errors": errors,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{} ops/s over {:.1}s ({} ok); latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}; errors {:?}",
            report["throughput"].as_f64().unwrap_or(0.0).round(),
            elapsed,
            ok,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            latencies.max() as f64 / 1000.0,
            errors
        );
    }
    ExitCode::SUCCESS
}
