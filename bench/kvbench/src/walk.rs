//! `kvbench walk`: loads N keys into one kvstore node, then lists them page by page
//! (`GET /kv?prefix=...&limit=...`, following `next` as `after`), checks that every key
//! came back exactly once, in byte order, with its value, and samples the node's
//! resident memory (`VmRSS`) before and during the walk.
//!
//! Keys are `{prefix}{i}` with `i` zero-padded to the width of N - 1, so byte order is
//! the order of `i`; the value of key `i` is `i` followed by `v`s up to `--value-size`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use serde_json::{json, Value};

use crate::procfs;

/// Load N keys, list them page by page, check each came back once and in order, and
/// measure the node's memory during the walk.
#[derive(ClapArgs, Debug, Clone)]
pub struct WalkArgs {
    /// Base URL of the node.
    #[arg(long)]
    pub url: String,
    /// Keys to load and walk.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// The keys' common prefix (the walk lists `prefix=` this).
    #[arg(long, default_value = "walk/")]
    pub prefix: String,
    /// Pairs per page (`limit`).
    #[arg(long, default_value_t = 1000)]
    pub limit: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// PUTs in flight while loading.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// The node's process id (default: the process listening on the URL's port).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Fail (exit 1) if the node's resident memory grows by this many MiB or more
    /// during the walk.
    #[arg(long, default_value_t = 64)]
    pub max_rss_growth_mib: u64,
    /// After the load, wait at most this long for the node's RSS to hold still (move
    /// by less than 1 MiB over 1 s) before the walk's "before" sample.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub settle_max: Duration,
    /// Do not load: the keys are there already (from an earlier walk).
    #[arg(long)]
    pub skip_load: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// For https:// URLs: the CA certificates (PEM) the node's certificate chains to.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// A bearer token sent with every request (kvstore with `auth.tokens`).
    #[arg(long, env = "KVBENCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// The digits key `i` is padded to, for `n` keys.
pub fn width(n: u64) -> usize {
    n.saturating_sub(1).max(1).to_string().len()
}

pub fn key_for(prefix: &str, width: usize, i: u64) -> String {
    format!("{prefix}{i:0width$}")
}

pub fn value_for(i: u64, size: usize) -> String {
    let mut v = i.to_string();
    if v.len() < size {
        v.extend(std::iter::repeat_n('v', size - v.len()));
    }
    v
}

/// Checks a walk's keys as they arrive, page by page: each must come after the one
/// before it (so none is repeated or out of order), and together they must be exactly
/// the N keys loaded, each with its value.
#[derive(Debug)]
pub struct WalkCheck {
    prefix: String,
    width: usize,
    n: u64,
    value_size: usize,
    next_expected: u64,
    last: Option<String>,
    pub seen: u64,
    pub missing: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    pub wrong_values: u64,
    pub bad_next: u64,
    /// The first few problems, described.
    pub problems: Vec<String>,
}

const MAX_PROBLEMS: usize = 20;

impl WalkCheck {
    pub fn new(prefix: &str, n: u64, value_size: usize) -> Self {
        WalkCheck {
            prefix: prefix.to_string(),
            width: width(n),
            n,
            value_size,
            next_expected: 0,
            last: None,
            seen: 0,
            missing: 0,
            out_of_order: 0,
            unexpected: 0,
            wrong_values: 0,
            bad_next: 0,
            problems: Vec::new(),
        }
    }

    fn problem(&mut self, text: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(text);
        }
    }

    /// One page: its pairs in the order received, and its `next`.
    pub fn page(&mut self, kvs: &[(String, Option<String>)], next: Option<&str>) {
        for (key, value) in kvs {
            self.key(key, value.as_deref());
        }
        if let Some(next) = next {
            if kvs.last().map(|(k, _)| k.as_str()) != Some(next) && !kvs.is_empty() {
                self.bad_next += 1;
                self.problem(format!(
                    "a page's next is {next:?}, not its last key {:?}",
                    kvs.last().map(|(k, _)| k)
                ));
            }
        }
    }

    fn key(&mut self, key: &str, value: Option<&str>) {
        self.seen += 1;
        if let Some(last) = &self.last {
            if key <= last.as_str() {
                self.out_of_order += 1;
                let what = if key == last {
                    "repeated"
                } else {
                    "out of order"
                };
                self.problem(format!("key {key:?} after {last:?}: {what}"));
                return;
            }
        }
        self.last = Some(key.to_string());
        let index = key
            .strip_prefix(&self.prefix)
            .filter(|digits| {
                digits.len() == self.width && digits.bytes().all(|b| b.is_ascii_digit())
            })
            .and_then(|digits| digits.parse::<u64>().ok())
            .filter(|i| *i < self.n);
        let Some(i) = index else {
            self.unexpected += 1;
            self.problem(format!("key {key:?} was not loaded"));
            return;
        };
        if i > self.next_expected {
            self.missing += i - self.next_expected;
            let first = key_for(&self.prefix, self.width, self.next_expected);
            self.problem(format!(
                "{} key(s) missing before {key:?}, from {first:?}",
                i - self.next_expected
            ));
        }
        self.next_expected = i + 1;
        if value != Some(value_for(i, self.value_size).as_str()) {
            self.wrong_values += 1;
            self.problem(format!("key {key:?} has value {value:?}"));
        }
    }

    /// After the last page: the keys never seen at the end of the range count as
    /// missing. True if the walk saw every key exactly once, in order, with its value.
    pub fn finish(&mut self) -> bool {
        if self.next_expected < self.n {
            let tail = self.n - self.next_expected;
            self.missing += tail;
            let first = key_for(&self.prefix, self.width, self.next_expected);
            self.problem(format!("{tail} key(s) missing at the end, from {first:?}"));
            self.next_expected = self.n;
        }
        self.missing == 0
            && self.out_of_order == 0
            && self.unexpected == 0
            && self.wrong_values == 0
            && self.bad_next == 0
            && self.seen == self.n
    }
}

/// Samples a process's `VmRSS` every 20 ms on its own thread until stopped; keeps the
/// largest value.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<(u64, u64)>>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut peak, mut samples) = (0, 0);
            loop {
                peak = peak.max(procfs::rss_kib(pid)?);
                samples += 1;
                if flag.load(Ordering::Relaxed) {
                    return Ok((peak, samples));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler { stop, thread }
    }

    /// The peak (KiB) and the number of samples, the last taken after this call.
    fn finish(self) -> anyhow::Result<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the sampler panicked"))?
    }
}

async fn put_with_retries(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    value: &str,
) -> anyhow::Result<()> {
    let mut last = String::new();
    for attempt in 0..30u64 {
        match client
            .put(format!("{url}/kv/{key}"))
            .json(&json!({ "value": value }))
            .send()
            .await
        {
            Ok(resp) if resp.status() == 201 => return Ok(()),
            Ok(resp) => {
                let status = resp.status();
                last = format!("{status}: {}", resp.text().await.unwrap_or_default());
                // Load shedding and a passing leader change are worth retrying; a
                // refusal (400, 401, 403, 413) is not.
                if status.is_client_error() && status != 429 {
                    break;
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20 * (attempt + 1))).await;
    }
    anyhow::bail!("PUT {key}: {last}")
}

/// Loads the N keys with `connections` PUTs in flight, reporting progress on stderr.
async fn load(args: &WalkArgs, clients: Vec<reqwest::Client>) -> anyhow::Result<f64> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let width = width(args.keys);
    let url = args.url.trim_end_matches('/').to_string();
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        let (next, done, url, args) = (next.clone(), done.clone(), url.clone(), args.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.keys {
                    return anyhow::Ok(());
                }
                let key = key_for(&args.prefix, width, i);
                put_with_retries(&client, &url, &key, &value_for(i, args.value_size)).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let progress = {
        let (done, n) = (done.clone(), args.keys);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.tick().await;
            loop {
                tick.tick().await;
                let d = done.load(Ordering::Relaxed);
                let rate = d as f64 / started.elapsed().as_secs_f64();
                eprintln!("kvbench walk: loaded {d}/{n} keys ({rate:.0}/s)");
            }
        })
    };
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined.map_err(anyhow::Error::from).and_then(|r| r) {
            // One writer that gives up stops the load: the others would only add to it.
            next.store(args.keys, Ordering::Relaxed);
            result = result.and(Err(e));
        }
    }
    progress.abort();
    result?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "kvbench walk: loaded {} keys in {seconds:.1}s ({:.0}/s)",
        args.keys,
        args.keys as f64 / seconds
    );
    Ok(seconds)
}

/// Waits for the node's memory to hold still after the load (what the load started,
/// such as a snapshot of the last entries, finishing), so that the walk is measured from
/// a steady size: until `VmRSS` moves by less than 1 MiB over 1 s, at most `max`. The
/// seconds waited.
async fn settle(pid: u32, max: Duration) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut last = procfs::rss_kib(pid)?;
    while started.elapsed() < max {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = procfs::rss_kib(pid)?;
        if now.abs_diff(last) < 1024 {
            break;
        }
        last = now;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// One page: its pairs and its `next`.
type Page = (Vec<(String, Option<String>)>, Option<String>);

async fn get_page(
    client: &reqwest::Client,
    args: &WalkArgs,
    after: Option<&str>,
) -> anyhow::Result<Page> {
    let url = format!("{}/kv", args.url.trim_end_matches('/'));
    let limit = args.limit.to_string();
    let mut query = vec![("prefix", args.prefix.as_str()), ("limit", limit.as_str())];
    if let Some(after) = after {
        query.push(("after", after));
    }
    let resp = client.get(&url).query(&query).send().await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    if status != 200 {
        anyhow::bail!("GET /kv after {after:?}: {status} {body}");
    }
    let kvs = body["kvs"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("a page without kvs: {body}"))?;
    if body["count"].as_u64() != Some(kvs.len() as u64) {
        anyhow::bail!("a page's count is not the number of its pairs: {body}");
    }
    let pairs = kvs
        .iter()
        .map(|kv| {
            let key = kv["key"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("a pair without a key: {kv}"))?;
            Ok((key.to_string(), kv["value"].as_str().map(str::to_owned)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((pairs, body["next"].as_str().map(str::to_owned)))
}

pub async fn run(args: WalkArgs) -> anyhow::Result<bool> {
    let pid = match args.pid {
        Some(pid) => pid,
        None => {
            let url = reqwest::Url::parse(&args.url)?;
            let port = url
                .port_or_known_default()
                .ok_or_else(|| anyhow::anyhow!("--url {} has no port", args.url))?;
            procfs::pid_listening_on(port)?
        }
    };
    procfs::rss_kib(pid)?;
    let clients = (0..args.connections.max(1))
        .map(|_| crate::http_client(args.ca_file.as_deref(), args.token.as_deref()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rss_start_kib = procfs::rss_kib(pid)?;
    let load_seconds = if args.skip_load {
        0.0
    } else {
        load(&args, clients.clone()).await?
    };

    let client = &clients[0];
    let mut check = WalkCheck::new(&args.prefix, args.keys, args.value_size);
    let rss_loaded_kib = procfs::rss_kib(pid)?;
    let settle_seconds = settle(pid, args.settle_max).await?;
    let rss_before_kib = procfs::rss_kib(pid)?;
    let sampler = RssSampler::start(pid);
    let started = Instant::now();
    let mut pages = 0u64;
    let mut after: Option<String> = None;
    let walked = loop {
        let page = match get_page(client, &args, after.as_deref()).await {
            Ok(page) => page,
            Err(e) => break Err(e),
        };
        pages += 1;
        check.page(&page.0, page.1.as_deref());
        if pages.is_multiple_of(100) {
            eprintln!("kvbench walk: {pages} pages, {} keys", check.seen);
        }
        match page.1 {
            Some(next) => after = Some(next),
            None => break Ok(()),
        }
        if check.seen > args.keys.saturating_mul(2) + 1000 {
            break Err(anyhow::anyhow!(
                "the walk has seen {} keys of {} and goes on: stopped",
                check.seen,
                args.keys
            ));
        }
    };
    let walk_seconds = started.elapsed().as_secs_f64();
    let (rss_peak_kib, rss_samples) = sampler.finish()?;
    walked?;
    let rss_after_kib = procfs::rss_kib(pid)?;
    let exact = check.finish();
    let growth_kib = rss_peak_kib.saturating_sub(rss_before_kib);
    let within = growth_kib < args.max_rss_growth_mib * 1024;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let report = json!({
        "url": args.url,
        "pid": pid,
        "keys": args.keys,
        "prefix": args.prefix,
        "limit": args.limit,
        "value_size": args.value_size,
        "load_seconds": load_seconds,
        "pages": pages,
        "walk_seconds": walk_seconds,
        "keys_per_second": check.seen as f64 / walk_seconds,
        "seen": check.seen,
        "missing": check.missing,
        "out_of_order_or_repeated": check.out_of_order,
        "unexpected": check.unexpected,
        "wrong_values": check.wrong_values,
        "bad_next": check.bad_next,
        "problems": check.problems,
        "exactly_once_in_order": exact,
        "rss_start_mib": mib(rss_start_kib),
        "rss_loaded_mib": mib(rss_loaded_kib),
        "settle_seconds": settle_seconds,
        "rss_before_mib": mib(rss_before_kib),
        "rss_peak_mib": mib(rss_peak_kib),
        "rss_after_mib": mib(rss_after_kib),
        "rss_growth_mib": mib(growth_kib),
        "rss_samples": rss_samples,
        "max_rss_growth_mib": args.max_rss_growth_mib,
        "rss_within_limit": within,
        "ok": exact && within,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "walked {} keys in {pages} pages of up to {} in {walk_seconds:.1}s ({:.0} keys/s); \
             every key exactly once, in order: {}",
            check.seen,
            args.limit,
            check.seen as f64 / walk_seconds,
            if exact { "yes" } else { "NO" }
        );
        if !exact {
            println!(
                "missing {}, out of order or repeated {}, not loaded {}, wrong values {}, bad next {}",
                check.missing, check.out_of_order, check.unexpected, check.wrong_values, check.bad_next
            );
            for p in &check.problems {
                println!("  {p}");
            }
        }
        println!(
            "node RSS (pid {pid}): {:.1} MiB at the start, {:.1} MiB after the load, \
             steady after {settle_seconds:.0}s more at {:.1} MiB before the walk, \
             peak {:.1} MiB during it ({rss_samples} samples), growth {:.1} MiB \
             (limit < {} MiB: {}); {:.1} MiB after",
            mib(rss_start_kib),
            mib(rss_loaded_kib),
            mib(rss_before_kib),
            mib(rss_peak_kib),
            mib(growth_kib),
            args.max_rss_growth_mib,
            if within { "yes" } else { "NO" },
            mib(rss_after_kib)
        );
    }
    Ok(exact && within)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(n: u64, range: std::ops::Range<u64>) -> Vec<(String, Option<String>)> {
        let w = width(n);
        range
            .map(|i| (key_for("p/", w, i), Some(value_for(i, 10))))
            .collect()
    }

    fn walk(n: u64, pages: &[Vec<(String, Option<String>)>]) -> WalkCheck {
        let mut check = WalkCheck::new("p/", n, 10);
        for (i, p) in pages.iter().enumerate() {
            let next = (i + 1 < pages.len()).then(|| p.last().unwrap().0.clone());
            check.page(p, next.as_deref());
        }
        check
    }

    #[test]
    fn keys_sort_as_their_numbers() {
        assert_eq!(width(1_000_000), 6);
        assert_eq!(width(1_000_001), 7);
        assert_eq!(width(1), 1);
        assert!(key_for("p/", 6, 99_999) < key_for("p/", 6, 100_000));
        assert_eq!(value_for(12, 5), "12vvv");
        assert_eq!(value_for(123_456, 3), "123456");
    }

    #[test]
    fn an_exact_walk_passes() {
        let mut check = walk(1000, &[page(1000, 0..400), page(1000, 400..1000)]);
        assert!(check.finish(), "{check:?}");
        assert_eq!(check.seen, 1000);
    }

    #[test]
    fn a_missing_key_fails() {
        let mut check = walk(100, &[page(100, 0..50), page(100, 51..100)]);
        assert!(!check.finish());
        assert_eq!(check.missing, 1);
        assert!(
            check.problems[0].contains("\"p/50\""),
            "{:?}",
            check.problems
        );
        let mut check = walk(100, &[page(100, 0..99)]);
        assert!(!check.finish());
        assert_eq!(check.missing, 1);
    }

    #[test]
    fn a_repeated_key_fails() {
        // The second page starts again at the first page's last key.
        let mut check = walk(100, &[page(100, 0..50), page(100, 49..100)]);
        assert!(!check.finish());
        assert_eq!((check.out_of_order, check.missing), (1, 0));
        assert!(
            check.problems[0].contains("repeated"),
            "{:?}",
            check.problems
        );
    }

    #[test]
    fn keys_out_of_order_fail() {
        let mut p = page(100, 0..100);
        p.swap(10, 11);
        let mut check = walk(100, &[p]);
        assert!(!check.finish());
        assert!(check.out_of_order >= 1, "{check:?}");
    }

    #[test]
    fn a_wrong_value_or_a_foreign_key_fails() {
        let mut p = page(100, 0..100);
        p[5].1 = Some("other".into());
        let mut check = walk(100, &[p]);
        assert!(!check.finish());
        assert_eq!(check.wrong_values, 1);

        let mut p = page(100, 0..100);
        p.push(("p/990".into(), Some("x".into())));
        let mut check = walk(100, &[p]);
        assert!(!check.finish());
        assert_eq!(check.unexpected, 1);
    }

    #[test]
    fn a_next_that_is_not_the_last_key_fails() {
        let mut check = WalkCheck::new("p/", 10, 10);
        check.page(&page(10, 0..5), Some("p/3"));
        check.page(&page(10, 5..10), None);
        assert!(!check.finish());
        assert_eq!(check.bad_next, 1);
    }
}
