//! `kvbench` against a real node: the node runs in this process (kvstore's library), the
//! generator is the built binary, so its command line, exit status and output are what
//! is tested.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kvstore::config::Settings;
use kvstore::startup::Application;
use serde_json::Value;

/// A node on loopback with fast Raft timers and `data_dir` as storage, configured as an
/// operator would through `KV_*` variables (`env` adds to them); stops when dropped.
struct Node {
    addr: String,
    /// The node's data, removed when the test ends.
    dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Node {
    /// A node on a new temporary data dir, ready to serve, and a client for it.
    async fn ready(env: &[(&str, &str)]) -> (Node, reqwest::Client) {
        let client = reqwest::Client::new();
        let node = Node::start(tempfile::tempdir().unwrap(), env).await;
        node.wait_ready(&client).await;
        (node, client)
    }

    async fn start(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Node {
        let data_dir = dir.path().to_str().expect("UTF-8 temp dir").to_owned();
        let data_dir = data_dir.as_str();
        let vars: HashMap<String, String> = [
            ("KV_SERVER_HOST", "127.0.0.1"),
            ("KV_SERVER_PORT", "0"),
            ("KV_CLUSTER_RAFT_HOST", "127.0.0.1"),
            ("KV_CLUSTER_RAFT_PORT", "0"),
            ("KV_STORAGE_DATA_DIR", data_dir),
            ("KV_RAFT_HEARTBEAT_TIMEOUT", "50ms"),
            ("KV_RAFT_ELECTION_TIMEOUT", "150ms"),
        ]
        .iter()
        .chain(env)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let settings = Settings::load_from(None, |name| vars.get(name).cloned()).expect("settings");
        let app = Application::build(&settings).await.expect("build the node");
        let addr = app.local_addr().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Node {
            addr,
            dir,
            _stop: stop,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Polls `/ready` until it answers 200, failing after 10 s.
    async fn wait_ready(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let resp = client.get(self.url("/ready")).send().await;
            if resp.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the node was not ready within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs `kvbench` to completion (it stops by itself after warm-up plus duration; the
/// test fails if it has not exited within 30 s), off the runtime's threads, which serve
/// the node meanwhile.
async fn kvbench(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kvbench"))
            .args(&args)
            .env_remove("KVBENCH_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kvbench");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("kvbench {args:?} did not exit within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    })
    .await
    .expect("kvbench runner")
}

/// The load generator against a real node with client authentication: with a token it
/// reports operations, latencies and no errors; without one, every operation is an
/// error counted under the API's code; a bad `--ca-file` stops it before any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvbench_reports_throughput_latency_and_errors_by_code() {
    let (node, client) = Node::ready(&[("KV_AUTH_TOKENS", "bench-tok-41:write")]).await;
    let url = node.url("");
    let common = [
        "--urls",
        &url,
        "--connections",
        "4",
        "--keys",
        "50",
        "--writes",
        "0.5",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--json",
    ];

    let (status, out, err) = kvbench(&[&common[..], &["--token", "bench-tok-41"]].concat()).await;
    assert!(status.success(), "kvbench failed: {err}");
    let report: Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    let ok = report["ok"].as_u64().unwrap();
    assert!(ok > 0, "{report}");
    assert!(report["ok_all"].as_u64().unwrap() >= ok, "{report}");
    assert!(report["throughput"].as_f64().unwrap() > 0.0, "{report}");
    let latency = &report["latency_ms"];
    let at = |q: &str| latency[q].as_f64().unwrap();
    assert!(
        at("p50") > 0.0 && at("p50") <= at("p99") && at("p99") <= at("max"),
        "{report}"
    );
    // The generator really wrote: its keys are there.
    let stored = client
        .get(node.url("/status"))
        .bearer_auth("bench-tok-41")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert!(stored["key_count"].as_u64().unwrap() > 0, "{stored}");

    let refused = client.get(node.url("/kv/x")).send().await.unwrap();
    let code = refused.json::<Value>().await.unwrap()["code"].clone();
    let (status, out, err) = kvbench(&common).await;
    assert!(status.success(), "kvbench failed: {err}");
    let report: Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(report["ok"], 0, "{report}");
    let errors = report["errors"].as_object().unwrap();
    assert_eq!(errors.len(), 1, "{report}");
    assert!(
        errors[code.as_str().unwrap()].as_u64().unwrap() > 0,
        "{report}"
    );

    let missing = node.dir.path().join("no-such-ca.pem");
    let (status, _, err) =
        kvbench(&[&common[..], &["--ca-file", missing.to_str().unwrap()]].concat()).await;
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("--ca-file"), "{err}");
}

/// `kvbench walk` against a real node (this process, whose memory it samples): it loads
/// the keys, walks them and passes; a key under the prefix that it did not load makes
/// the same walk fail with exit status 1, the key named in the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvbench_walk_checks_every_key_once_in_order_and_reports_memory() {
    let (node, client) = Node::ready(&[]).await;
    let url = node.url("");
    let pid = std::process::id().to_string();
    let common = [
        "walk",
        "--url",
        &url,
        "--pid",
        &pid,
        "--keys",
        "1500",
        "--limit",
        "200",
        "--settle-max",
        "3s",
        "--json",
    ];

    let (status, out, err) = kvbench(&common).await;
    assert!(status.success(), "kvbench walk failed: {out} {err}");
    let report: Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(report["seen"], 1500, "{report}");
    assert_eq!(report["pages"], 8, "{report}");
    assert_eq!(report["exactly_once_in_order"], true, "{report}");
    assert_eq!(report["rss_within_limit"], true, "{report}");
    let before = report["rss_before_mib"].as_f64().unwrap();
    assert!(before > 1.0, "{report}");
    assert!(
        report["rss_peak_mib"].as_f64().unwrap() >= before,
        "{report}"
    );
    assert!(report["rss_samples"].as_u64().unwrap() >= 1, "{report}");

    let resp = client
        .put(node.url("/kv/walk/0999x"))
        .json(&serde_json::json!({"value": "stray"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let (status, out, err) = kvbench(&[&common[..], &["--skip-load"]].concat()).await;
    assert_eq!(status.code(), Some(1), "{out} {err}");
    let report: Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(report["exactly_once_in_order"], false, "{report}");
    assert_eq!(report["unexpected"], 1, "{report}");
    assert_eq!(report["missing"], 0, "{report}");
    assert!(
        report["problems"][0]
            .as_str()
            .unwrap()
            .contains("walk/0999x"),
        "{report}"
    );
}

/// The `cas` workload against a real node: 8 connections on 3 keys conflict, retry on
/// 412 and never lose an update: the keys' counters add up to the successful
/// compare-and-sets of the whole run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvbench_cas_retries_conflicts_and_loses_no_update() {
    let (node, client) = Node::ready(&[]).await;
    let url = node.url("");
    let (status, out, err) = kvbench(&[
        "--urls",
        &url,
        "--workload",
        "cas",
        "--connections",
        "8",
        "--keys",
        "3",
        "--value-size",
        "20",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--json",
    ])
    .await;
    assert!(status.success(), "kvbench failed: {err}");
    let report: Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(report["op"], "cas", "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert!(report["ok"].as_u64().unwrap() > 0, "{report}");
    assert!(report["conflicts"].as_u64().unwrap() > 0, "{report}");
    let rate = report["conflict_rate"].as_f64().unwrap();
    assert!(rate > 0.0 && rate < 1.0, "{report}");

    let mut total = 0;
    for i in 0..3 {
        let body: Value = client
            .get(node.url(&format!("/kv/bench-{i}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let value = body["value"].as_str().expect("a value");
        assert_eq!(value.len(), 20, "{body}");
        let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
        total += digits.parse::<u64>().unwrap();
    }
    assert_eq!(total, report["ok_all"].as_u64().unwrap(), "{report}");
}

/// The open loop at a modest rate that the node keeps up with: about that rate
/// achieved, nothing behind, latencies; `--ycsb a` is half writes over Zipfian keys,
/// values drawn from the range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvbench_open_loop_achieves_a_modest_rate() {
    let (node, client) = Node::ready(&[]).await;
    let url = node.url("");
    let (status, out, err) = kvbench(&[
        "--urls",
        &url,
        "--rate",
        "100",
        "--ycsb",
        "a",
        "--connections",
        "8",
        "--keys",
        "200",
        "--value-size",
        "64..256",
        "--duration",
        "2s",
        "--warmup",
        "300ms",
        "--json",
    ])
    .await;
    assert!(status.success(), "kvbench failed: {err}");
    let report: Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(report["mode"], "open", "{report}");
    assert_eq!(report["rate"], 100.0, "{report}");
    assert_eq!(report["ycsb"], "a", "{report}");
    assert_eq!(report["writes"], 0.5, "{report}");
    assert_eq!(report["distribution"], "zipfian", "{report}");
    assert_eq!(report["zipf_theta"], 0.99, "{report}");
    assert_eq!(report["value_size_min"], 64, "{report}");
    assert_eq!(report["value_size_max"], 256, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    // 2 s at 100/s: 200 operations due in the measured part.
    assert_eq!(report["scheduled"], 200, "{report}");
    let achieved = report["achieved_rate"].as_f64().unwrap();
    assert!((85.0..=100.0).contains(&achieved), "{report}");
    let behind = report["behind"].as_u64().unwrap();
    assert!(behind <= 15, "{report}");
    assert_eq!(
        report["sent"].as_u64().unwrap() + behind,
        200,
        "sent and behind make up the schedule: {report}"
    );
    assert_eq!(report["ok"], report["sent"], "{report}");
    let latency = &report["latency_ms"];
    let at = |q: &str| latency[q].as_f64().unwrap();
    assert!(
        at("p50") > 0.0
            && at("p50") <= at("p99")
            && at("p99") <= at("p999")
            && at("p999") <= at("max"),
        "{report}"
    );
    let lag = &report["send_lag_ms"];
    assert!(
        lag["p50"].as_f64().unwrap() <= lag["max"].as_f64().unwrap(),
        "{report}"
    );
    // Values of the range's sizes were written.
    let body: Value = client
        .get(node.url("/kv?prefix=bench-&limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kvs = body["kvs"].as_array().unwrap();
    assert!(!kvs.is_empty(), "{body}");
    for kv in kvs {
        let len = kv["value"].as_str().unwrap().len();
        assert!((64..=256).contains(&len), "{kv}");
    }
}

/// The open loop at a rate one connection cannot keep: the operations still unsent at
/// the end are counted as behind, and those sent late count their wait for the
/// connection as latency, so the latencies reach about the time the backlog stands
/// for (a generator that timed from the actual send would show only service times).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvbench_open_loop_counts_waiting_as_latency_and_reports_what_is_behind() {
    let (node, _client) = Node::ready(&[]).await;
    let url = node.url("");
    let (status, out, err) = kvbench(&[
        "--urls",
        &url,
        "--rate",
        "20000",
        "--connections",
        "1",
        "--keys",
        "100",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--json",
    ])
    .await;
    assert!(status.success(), "kvbench failed: {err}");
    let report: Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(report["scheduled"], 20_000, "{report}");
    let behind = report["behind"].as_u64().unwrap();
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent > 0 && behind > 0, "{report}");
    assert_eq!(sent + behind, 20_000, "{report}");
    assert!(
        report["achieved_rate"].as_f64().unwrap() < 20_000.0,
        "{report}"
    );
    // The last operation sent was due `behind / rate` seconds before the end.
    let backlog_ms = behind as f64 / 20.0;
    let max = report["latency_ms"]["max"].as_f64().unwrap();
    assert!(max >= backlog_ms * 0.5, "backlog {backlog_ms} ms: {report}");
    assert!(
        report["latency_ms"]["p50"].as_f64().unwrap() >= backlog_ms * 0.25,
        "backlog {backlog_ms} ms: {report}"
    );
    assert!(
        report["send_lag_ms"]["max"].as_f64().unwrap() >= backlog_ms * 0.5,
        "{report}"
    );
}

/// How many `bench-` keys the node holds.
async fn bench_keys(client: &reqwest::Client, node: &Node) -> u64 {
    let body: Value = client
        .get(node.url("/kv?prefix=bench-&count_only=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["count"].as_u64().expect("a count")
}

/// `--preload N --duration 0s` writes exactly keys `bench-0` to `bench-<N-1>`, in
/// transactions, and reports it; a preload of single PUTs before a run shows in the
/// text report; a bad
/// `--value-size` is refused before any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvbench_preload_writes_exactly_the_keys() {
    let (node, client) = Node::ready(&[]).await;
    let url = node.url("");

    let (status, out, err) = kvbench(&[
        "--urls",
        &url,
        "--preload",
        "3000",
        "--connections",
        "8",
        "--value-size",
        "10..20",
        "--duration",
        "0s",
        "--json",
    ])
    .await;
    assert!(status.success(), "kvbench failed: {err}");
    let report: Value = serde_json::from_str(&out).expect("one JSON object");
    let preload = &report["preload"];
    assert_eq!(preload["keys"], 3000, "{report}");
    assert_eq!(preload["written"], 3000, "{report}");
    // In transactions of 100 keys (the default).
    assert_eq!(preload["batch"], 100, "{report}");
    assert_eq!(preload["errors"], serde_json::json!({}), "{report}");
    assert!(preload["seconds"].as_f64().unwrap() > 0.0, "{report}");
    assert!(preload["rate"].as_f64().unwrap() > 0.0, "{report}");
    assert!(err.contains("preload: 3000 keys in"), "{err}");
    assert_eq!(bench_keys(&client, &node).await, 3000);
    for i in [0, 1234, 2999] {
        let body: Value = client
            .get(node.url(&format!("/kv/bench-{i}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let len = body["value"].as_str().expect("a value").len();
        assert!((10..=20).contains(&len), "{body}");
    }
    let missing = client.get(node.url("/kv/bench-3000")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    // Text: the preload's line, then the run's (reads of the keys just written).
    let (status, out, err) = kvbench(&[
        "--urls",
        &url,
        "--preload",
        "50",
        // Each key its own PUT.
        "--preload-batch",
        "1",
        "--keys",
        "50",
        "--ycsb",
        "c",
        "--connections",
        "4",
        "--duration",
        "300ms",
        "--warmup",
        "0s",
    ])
    .await;
    assert!(status.success(), "kvbench failed: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("preload: 50 keys in "), "{out}");
    assert!(lines[0].ends_with(", 1 a request)"), "{out}");
    assert!(lines[1].starts_with("rw: "), "{out}");
    assert!(lines[1].contains("errors {}"), "{out}");
    assert!(lines[1].contains("50 zipfian keys (theta 0.99)"), "{out}");
    assert_eq!(bench_keys(&client, &node).await, 3000);

    for (bad, says) in [
        ("1024..64", "start 1024 is above its end 64"),
        ("64..big", "range of sizes"),
    ] {
        let (status, out, err) =
            kvbench(&["--urls", &url, "--value-size", bad, "--duration", "0s"]).await;
        assert!(!status.success(), "{bad}: {out}");
        assert!(
            err.contains("--value-size") && err.contains(says),
            "{bad}: {err}"
        );
    }
    let (status, _, err) = kvbench(&["--urls", &url, "--ycsb", "b", "--writes", "1"]).await;
    assert!(!status.success() && err.contains("--ycsb"), "{err}");
    let (status, _, err) = kvbench(&["--urls", &url, "--duration", "0s"]).await;
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("--preload"), "{err}");
}
