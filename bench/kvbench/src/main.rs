//! `kvbench`: a closed-loop load generator for kvstore, and for etcd through its JSON
//! gateway, so both are measured by the same code with the same settings.
//!
//! Each of `--connections` workers keeps one request in flight on its own connection,
//! picks a random key from `--keys` and does a write with probability `--writes` (else a
//! read), for `--warmup` then `--duration`. Latencies after the warm-up go into an HDR
//! histogram; errors are counted by their code. `--workload list` reads pages of a
//! listing instead, `--workload cas` does compare-and-set (see [`Workload`]).
//!
//! `kvbench walk` is not load: it loads many keys into one node, lists them all page by
//! page, checks that each came back once and in order, and measures the node's memory
//! meanwhile (see [`walk`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;

mod ops;
mod procfs;
mod walk;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    /// kvstore's API: `PUT /kv/{key}`, `GET /kv/{key}` (linearizable).
    Kvstore,
    /// etcd v3's JSON gateway: `/v3/kv/put`, `/v3/kv/range` (linearizable).
    Etcd,
}

/// What each operation of a worker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// A write of a random key with probability `--writes`, else a read of one.
    Rw,
    /// One page of a listing of every `bench-` key (`--page-size` pairs): each worker
    /// starts at a random key and follows `next` to the end, then starts over. kvstore:
    /// `GET /kv?prefix=bench-&limit=..&after=..`; etcd: `/v3/kv/range` with `range_end`.
    List,
    /// A compare-and-set of a random key: read its value (a counter) and revision,
    /// write the counter plus one only if the revision is unchanged, and repeat on a
    /// conflict until it succeeds. kvstore: `GET` then `PUT` with
    /// `If-Match: "<mod_revision>"` (412 is a conflict); etcd: `/v3/kv/range` then
    /// `/v3/kv/txn` comparing `mod_revision`. One operation is one successful
    /// compare-and-set, its latency from the first read to the success; the keys'
    /// counters add up to the successes of the whole run (`ok_all`).
    Cas,
}

/// More than load: `kvbench walk` checks a listing of many keys.
#[derive(clap::Subcommand, Debug)]
enum Command {
    Walk(walk::WalkArgs),
}

/// A closed-loop load generator for kvstore and etcd.
#[derive(Parser, Debug)]
#[command(
    name = "kvbench",
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Base URLs of the nodes; workers are spread over them round-robin.
    #[arg(long, value_delimiter = ',', required = true)]
    urls: Vec<String>,
    /// What the URLs point at.
    #[arg(long, value_enum, default_value = "kvstore")]
    target: Target,
    /// Concurrent connections, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// What the workers do.
    #[arg(long, value_enum, default_value = "rw")]
    workload: Workload,
    /// Pairs per page of the `list` workload.
    #[arg(long, default_value_t = 100)]
    page_size: u64,
    /// Share of operations that are writes, 0.0 to 1.0 (`rw` workload).
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
fn http_client(
    ca_file: Option<&std::path::Path>,
    token: Option<&str>,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10));
    if let Some(ca_file) = ca_file {
        builder =
            builder.use_preconfigured_tls(kvstore::tls::tool_client_config("--ca-file", ca_file)?);
    }
    if let Some(token) = token {
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
    /// `cas`: attempts that found the key changed since they read it (measured).
    conflicts: u64,
    /// `list`: pairs in the pages read (measured).
    pairs: u64,
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
    let b64 = |s: &str| ops::b64(s.as_bytes());
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
    Err(ops::error_code(status, &body))
}

/// One page of the `list` workload from `after` (`None`: the first page).
async fn list_op(
    client: &reqwest::Client,
    args: &Args,
    url: &str,
    after: Option<&str>,
) -> Result<ops::Page, String> {
    match args.target {
        Target::Kvstore => ops::kv_list_page(client, url, args.page_size, after).await,
        Target::Etcd => ops::etcd_list_page(client, url, args.page_size, after).await,
    }
}

/// One compare-and-set attempt of the `cas` workload.
async fn cas_op(
    client: &reqwest::Client,
    args: &Args,
    url: &str,
    key: &str,
) -> Result<ops::Cas, String> {
    match args.target {
        Target::Kvstore => ops::kv_cas(client, url, key, args.value_size).await,
        Target::Etcd => ops::etcd_cas(client, url, key, args.value_size).await,
    }
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
        conflicts: 0,
        pairs: 0,
    };
    // `list`: where this worker's walk is; it starts at a random key so that the
    // workers do not all read the same pages.
    let mut after = Some(format!(
        "{}{}",
        ops::KEY_PREFIX,
        rng.next() % args.keys.max(1)
    ));
    while !stop.load(Ordering::Relaxed) {
        let key = format!("{}{}", ops::KEY_PREFIX, rng.next() % args.keys.max(1));
        let started = Instant::now();
        let result = match args.workload {
            Workload::Rw => {
                let write = rng.unit() < args.writes;
                one_op(&client, &args, &url, &key, &value, write).await
            }
            Workload::List => match list_op(&client, &args, &url, after.as_deref()).await {
                Ok(page) => {
                    if measuring.load(Ordering::Relaxed) {
                        tally.pairs += page.pairs;
                    }
                    after = page.next;
                    Ok(())
                }
                Err(code) => Err(code),
            },
            // The same key until its compare-and-set succeeds (or fails otherwise).
            Workload::Cas => loop {
                match cas_op(&client, &args, &url, &key).await {
                    Ok(ops::Cas::Done) => break Ok(()),
                    Ok(ops::Cas::Conflict) => {
                        if measuring.load(Ordering::Relaxed) {
                            tally.conflicts += 1;
                        }
                        if stop.load(Ordering::Relaxed) {
                            break Err("STOPPED".to_string());
                        }
                    }
                    Err(code) => break Err(code),
                }
            },
        };
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
    let mut args = Args::parse();
    if let Some(Command::Walk(walk)) = args.command.take() {
        return match walk::run(walk).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("kvbench walk: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let args = Arc::new(args);
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        match http_client(args.ca_file.as_deref(), args.token.as_deref()) {
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
    let (mut all_ok, mut conflicts, mut pairs) = (0, 0, 0);
    for w in workers {
        let tally = w.await.expect("worker");
        all_ok += tally.all_ok;
        conflicts += tally.conflicts;
        pairs += tally.pairs;
        latencies.add(&tally.latencies).expect("same bounds");
        for (code, n) in tally.errors {
            *errors.entry(code).or_default() += n;
        }
    }
    let ok = latencies.len();
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    let op = format!("{:?}", args.workload).to_lowercase();
    let mut report = json!({
        "target": format!("{:?}", args.target).to_lowercase(),
        "op": op,
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
    match args.workload {
        Workload::Rw => {}
        Workload::List => {
            report["page_size"] = json!(args.page_size);
            report["pairs_per_page"] = json!(pairs as f64 / (ok as f64).max(1.0));
        }
        Workload::Cas => {
            report["conflicts"] = json!(conflicts);
            // Of the measured attempts, the share that found the key changed.
            report["conflict_rate"] = json!(conflicts as f64 / ((ok + conflicts) as f64).max(1.0));
        }
    }
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{op}: {} ops/s over {:.1}s ({} ok); latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}; errors {:?}{}",
            report["throughput"].as_f64().unwrap_or(0.0).round(),
            elapsed,
            ok,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            latencies.max() as f64 / 1000.0,
            errors,
            match args.workload {
                Workload::Rw => String::new(),
                Workload::List => format!(
                    "; {:.1} pairs a page",
                    report["pairs_per_page"].as_f64().unwrap_or(0.0)
                ),
                Workload::Cas => format!(
                    "; {conflicts} conflicts ({:.2}% of attempts)",
                    report["conflict_rate"].as_f64().unwrap_or(0.0) * 100.0
                ),
            }
        );
    }
    ExitCode::SUCCESS
}
