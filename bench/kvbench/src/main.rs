//! `kvbench`: a load generator for kvstore, and for etcd through its JSON gateway, so
//! both are measured by the same code with the same settings.
//!
//! Each of `--connections` workers has its own connection with one request in flight.
//! An operation picks a key of `--keys` (`--distribution`: uniform, or Zipfian with
//! exponent `--zipf-theta`, hot ranks scrambled over the key space, see [`keys`]) and
//! is a write with probability `--writes`, else a linearizable read; `--ycsb a|b|c`
//! sets YCSB's mixes (50%, 5% or no writes, Zipfian unless `--distribution` says
//! otherwise). Values are `--value-size` bytes, or sizes drawn uniformly from a range
//! (`64..1024`, both ends included). `--workload list` reads pages of a listing
//! instead, `--workload cas` does compare-and-set (see [`Workload`]).
//!
//! Closed loop (the default): each worker sends its next operation as soon as the last
//! one is answered, for `--warmup` then `--duration`. Open loop (`--rate N`): operations
//! are due every 1/N s over all connections whether or not one is free; a free
//! connection takes the next one due (see [`schedule`]), and latency counts from when it
//! was due, so time spent waiting for a connection counts too (no coordinated
//! omission). The report then adds the rate achieved, the operations still unsent when
//! the run ended (`behind`), and how late operations were sent (`send_lag_ms`: waiting
//! for a connection, plus the timer's resolution of about 1 ms, which latencies include).
//!
//! Latencies after the warm-up go into an HDR histogram; errors are counted by their
//! code. The report is one line of text, or one JSON object with `--json`.
//!
//! `--preload N` first writes keys `bench-0` to `bench-<N-1>` (`--preload-batch` keys
//! a transaction, `--connections` requests at a time, on the workers' connections,
//! progress on stderr); with `--duration 0s` it only loads and reports that (see
//! [`preload`]).
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
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;

use keys::{KeyChooser, KeyDistribution, ValueSize};
use schedule::Schedule;

mod keys;
mod ops;
mod preload;
mod procfs;
mod schedule;
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
    /// A write of a key drawn as `--distribution` says with probability `--writes` (or
    /// the `--ycsb` mix's), else a linearizable read of one.
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

/// YCSB's core workloads that read and update single keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Ycsb {
    /// 50% reads, 50% updates.
    A,
    /// 95% reads, 5% updates.
    B,
    /// Reads only.
    C,
}

/// More than load: `kvbench walk` checks a listing of many keys.
#[derive(clap::Subcommand, Debug)]
enum Command {
    Walk(walk::WalkArgs),
}

/// A load generator for kvstore and etcd, closed-loop or at a fixed rate.
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
    /// A YCSB mix instead of `--writes`: a (50% writes), b (5%), c (none); keys are
    /// Zipfian unless `--distribution` says otherwise.
    #[arg(long, value_enum, conflicts_with_all = ["writes", "workload"])]
    ycsb: Option<Ycsb>,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// How keys are drawn (default: uniform, or zipfian with `--ycsb`).
    #[arg(long, value_enum)]
    distribution: Option<KeyDistribution>,
    /// The Zipfian distribution's exponent (YCSB's default 0.99; 0 is uniform).
    #[arg(long, default_value_t = 0.99, value_parser = parse_theta)]
    zipf_theta: f64,
    /// Value size in bytes (`100`), or a range of sizes (`64..1024`, both included)
    /// from which each value's size is drawn uniformly.
    #[arg(long, default_value = "100", value_parser = clap::value_parser!(ValueSize))]
    value_size: ValueSize,
    /// Open loop: this many operations a second over all connections, each due at a
    /// fixed time and its latency counted from then. Without it: a closed loop.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Before the warm-up, write keys `bench-0` to `bench-<N-1>` (`--preload-batch` a
    /// request, `--connections` requests at a time); with `--duration 0s`, only that.
    #[arg(long, default_value_t = 0)]
    preload: u64,
    /// Keys the preload writes per request, in one transaction (at most 128, and
    /// fewer for large values); 1 writes each key with its own `PUT`.
    #[arg(long, default_value_t = 100)]
    preload_batch: u64,
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

impl Args {
    /// The share of writes: the `--ycsb` mix's, else `--writes`.
    fn write_share(&self) -> f64 {
        match self.ycsb {
            Some(Ycsb::A) => 0.5,
            Some(Ycsb::B) => 0.05,
            Some(Ycsb::C) => 0.0,
            None => self.writes,
        }
    }

    fn key_distribution(&self) -> KeyDistribution {
        match (self.distribution, self.ycsb) {
            (Some(d), _) => d,
            (None, Some(_)) => KeyDistribution::Zipfian,
            (None, None) => KeyDistribution::Uniform,
        }
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "`{text}` is not a rate: operations a second, above 0"
        )),
    }
}

fn parse_theta(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(theta) if theta.is_finite() && theta >= 0.0 => Ok(theta),
        _ => Err(format!("`{text}` is not an exponent: a number, 0 or more")),
    }
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
    /// Open loop: how long after it was due each measured operation was sent.
    lag: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    /// Successful operations over the whole run, warm-up included.
    all_ok: u64,
    /// `cas`: attempts that found the key changed since they read it (measured).
    conflicts: u64,
    /// `list`: pairs in the pages read (measured).
    pairs: u64,
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
    value_size: usize,
) -> Result<ops::Cas, String> {
    match args.target {
        Target::Kvstore => ops::kv_cas(client, url, key, value_size).await,
        Target::Etcd => ops::etcd_cas(client, url, key, value_size).await,
    }
}

/// What every worker shares.
struct Shared {
    args: Arc<Args>,
    keys: KeyChooser,
    /// Open loop: the operations' schedule.
    schedule: Option<Schedule>,
    /// Closed loop: whether the warm-up is over (and the run not).
    measuring: AtomicBool,
    stop: AtomicBool,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram")
}

/// Microseconds, at least 1 and at most the histograms' 60 s.
fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, 60_000_000)
}

async fn worker(id: usize, client: reqwest::Client, shared: Arc<Shared>) -> Tally {
    let args = &shared.args;
    let url = args.urls[id % args.urls.len()]
        .trim_end_matches('/')
        .to_string();
    let value = "v".repeat(args.value_size.max);
    let writes = args.write_share();
    let mut rng = SmallRng::seed_from_u64(
        0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9),
    );
    let mut tally = Tally {
        latencies: histogram(),
        lag: histogram(),
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
        rng.random_range(0..args.keys.max(1))
    ));
    loop {
        // Closed loop: the next operation, now. Open loop: the next one due, when due,
        // and whether it is measured follows from when it is due.
        let (due, measured) = match &shared.schedule {
            None if shared.stop.load(Ordering::Relaxed) => break,
            None => (None, None),
            Some(schedule) => match schedule.take() {
                None => break,
                Some((i, due)) => {
                    tokio::time::sleep_until(due.into()).await;
                    (Some(due), Some(schedule.measured(i)))
                }
            },
        };
        let measuring = || measured.unwrap_or_else(|| shared.measuring.load(Ordering::Relaxed));
        let key = format!("{}{}", ops::KEY_PREFIX, shared.keys.pick(&mut rng));
        let size = args.value_size.pick(&mut rng);
        let started = Instant::now();
        let result = match args.workload {
            Workload::Rw => {
                let write = rng.random::<f64>() < writes;
                one_op(&client, args, &url, &key, &value[..size], write).await
            }
            Workload::List => match list_op(&client, args, &url, after.as_deref()).await {
                Ok(page) => {
                    if measuring() {
                        tally.pairs += page.pairs;
                    }
                    after = page.next;
                    Ok(())
                }
                Err(code) => Err(code),
            },
            // The same key until its compare-and-set succeeds (or fails otherwise).
            Workload::Cas => loop {
                match cas_op(&client, args, &url, &key, size).await {
                    Ok(ops::Cas::Done) => break Ok(()),
                    Ok(ops::Cas::Conflict) => {
                        if measuring() {
                            tally.conflicts += 1;
                        }
                        if shared.stop.load(Ordering::Relaxed) {
                            break Err("STOPPED".to_string());
                        }
                    }
                    Err(code) => break Err(code),
                }
            },
        };
        tally.all_ok += u64::from(result.is_ok());
        if measuring() {
            // From when it was due (open loop), else from when it was sent.
            let latency = due.unwrap_or(started).elapsed();
            if let Some(due) = due {
                let _ = tally
                    .lag
                    .record(micros(started.saturating_duration_since(due)));
            }
            match result {
                Ok(()) => {
                    let _ = tally.latencies.record(micros(latency));
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
    if args.duration.is_zero() && args.preload == 0 {
        eprintln!("kvbench: --duration 0s measures nothing: it goes with --preload only");
        return ExitCode::from(2);
    }
    let keys = match KeyChooser::new(args.key_distribution(), args.keys, args.zipf_theta) {
        Ok(keys) => keys,
        Err(e) => {
            eprintln!("kvbench: {e}");
            return ExitCode::from(2);
        }
    };
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
    let args = Arc::new(args);
    let preloaded = if args.preload > 0 {
        Some(preload::run(&clients, &args).await)
    } else {
        None
    };
    // A preload that left keys out fails the run (exit 1), its report printed still.
    let preload_status = match &preloaded {
        Some(p) if p.failed() > 0 => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    };
    if let (Some(preloaded), true) = (&preloaded, args.duration.is_zero()) {
        if args.json {
            let report = json!({
                "target": format!("{:?}", args.target).to_lowercase(),
                "urls": args.urls,
                "connections": args.connections,
                "value_size": value_size_json(args.value_size),
                "value_size_min": args.value_size.min,
                "value_size_max": args.value_size.max,
                "preload": preloaded.json(),
            });
            println!("{report}");
        } else {
            println!("{}", preloaded.text());
        }
        return preload_status;
    }

    let schedule = args
        .rate
        .map(|rate| Schedule::new(Instant::now(), rate, args.warmup, args.duration));
    let shared = Arc::new(Shared {
        args,
        keys,
        schedule,
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let workers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(id, client)| tokio::spawn(worker(id, client, shared.clone())))
        .collect();
    let args = &shared.args;
    let (elapsed, taken) = match &shared.schedule {
        None => {
            tokio::time::sleep(args.warmup).await;
            shared.measuring.store(true, Ordering::Relaxed);
            let started = Instant::now();
            tokio::time::sleep(args.duration).await;
            shared.measuring.store(false, Ordering::Relaxed);
            (started.elapsed().as_secs_f64(), None)
        }
        // The measured part is the operations due in it, whatever the clock says
        // when they are answered.
        Some(schedule) => {
            tokio::time::sleep_until(schedule.end(args.warmup, args.duration).into()).await;
            (args.duration.as_secs_f64(), Some(schedule.close()))
        }
    };
    shared.stop.store(true, Ordering::Relaxed);

    let mut latencies = histogram();
    let mut lag = histogram();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut all_ok, mut conflicts, mut pairs) = (0, 0, 0);
    for w in workers {
        let tally = w.await.expect("worker");
        all_ok += tally.all_ok;
        conflicts += tally.conflicts;
        pairs += tally.pairs;
        latencies.add(&tally.latencies).expect("same bounds");
        lag.add(&tally.lag).expect("same bounds");
        for (code, n) in tally.errors {
            *errors.entry(code).or_default() += n;
        }
    }
    let ok = latencies.len();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let op = format!("{:?}", args.workload).to_lowercase();
    let distribution = args.key_distribution();
    let mut report = json!({
        "target": format!("{:?}", args.target).to_lowercase(),
        "op": op,
        "urls": args.urls,
        "connections": args.connections,
        "writes": args.write_share(),
        "keys": args.keys,
        "distribution": format!("{distribution:?}").to_lowercase(),
        "value_size": value_size_json(args.value_size),
        "value_size_min": args.value_size.min,
        "value_size_max": args.value_size.max,
        "mode": if taken.is_some() { "open" } else { "closed" },
        "seconds": elapsed,
        "ok": ok,
        // Warm-up included: with the CPU time of a whole run, gives CPU per operation.
        "ok_all": all_ok,
        "throughput": ok as f64 / elapsed,
        "latency_ms": {
            "p50": ms(&latencies, 0.5), "p90": ms(&latencies, 0.9),
            "p99": ms(&latencies, 0.99), "p999": ms(&latencies, 0.999),
            "max": latencies.max() as f64 / 1000.0,
        },
        "errors": errors,
    });
    if distribution == KeyDistribution::Zipfian {
        report["zipf_theta"] = json!(args.zipf_theta);
    }
    if let Some(ycsb) = args.ycsb {
        report["ycsb"] = json!(format!("{ycsb:?}").to_lowercase());
    }
    if let Some(taken) = &taken {
        report["rate"] = json!(args.rate);
        report["scheduled"] = json!(taken.scheduled);
        report["sent"] = json!(taken.sent);
        report["achieved_rate"] = json!(taken.sent as f64 / elapsed);
        report["behind"] = json!(taken.behind);
        report["send_lag_ms"] = json!({
            "p50": ms(&lag, 0.5), "p99": ms(&lag, 0.99), "max": lag.max() as f64 / 1000.0,
        });
    }
    if let Some(preloaded) = &preloaded {
        report["preload"] = preloaded.json();
    }
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
        if let Some(preloaded) = &preloaded {
            println!("{}", preloaded.text());
        }
        let keys = match distribution {
            KeyDistribution::Uniform => format!("{} uniform keys", args.keys),
            KeyDistribution::Zipfian => {
                format!("{} zipfian keys (theta {})", args.keys, args.zipf_theta)
            }
        };
        println!(
            "{op}: {} ops/s over {:.1}s ({} ok); latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}; errors {:?}; {keys}, {}-byte values{}{}",
            report["throughput"].as_f64().unwrap_or(0.0).round(),
            elapsed,
            ok,
            ms(&latencies, 0.5),
            ms(&latencies, 0.9),
            ms(&latencies, 0.99),
            ms(&latencies, 0.999),
            latencies.max() as f64 / 1000.0,
            errors,
            args.value_size,
            match &taken {
                None => String::new(),
                Some(taken) => format!(
                    "; open loop at {}/s: achieved {:.0}/s, {} of {} scheduled behind, sent late by ms p50 {:.2} p99 {:.2} max {:.2}",
                    args.rate.unwrap_or(0.0),
                    report["achieved_rate"].as_f64().unwrap_or(0.0),
                    taken.behind,
                    taken.scheduled,
                    ms(&lag, 0.5),
                    ms(&lag, 0.99),
                    lag.max() as f64 / 1000.0,
                ),
            },
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
    preload_status
}

/// The report's `value_size`: the size, or for a range its mean (as before ranges
/// were possible, a number; `value_size_min` and `value_size_max` give the range).
fn value_size_json(size: ValueSize) -> serde_json::Value {
    if size.is_fixed() {
        json!(size.min)
    } else {
        json!(size.mean())
    }
}
