//! A real Prometheus (Debian's package) scrapes a real three-node cluster under
//! traffic; the leader is killed; then every PromQL expression in `dashboards/*.json`
//! must return data, the leader-changes panel must show the change, and each node's
//! scrape must pass `promtool check metrics`. (The alert rules are tested by
//! `integration-tests/tests/alerts.rs`.)
//!
//! Without the `prometheus` and `promtool` binaries the test says it is skipped, unless
//! `KV_REQUIRE_PROMETHEUS` is set (CI sets it), which makes that a failure.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::harness::Cluster;
use crate::support::{eventually, free_port, get_json, put_json};
use serde_json::Value;

fn tools_available() -> bool {
    available(&["prometheus", "promtool"])
}

fn available(tools: &[&str]) -> bool {
    let found = tools.iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !found {
        assert!(
            std::env::var_os("KV_REQUIRE_PROMETHEUS").is_none(),
            "KV_REQUIRE_PROMETHEUS is set but {} not installed",
            tools.join(" or ")
        );
        eprintln!("SKIPPED: install Debian's `prometheus` package to run this test");
    }
    found
}

/// A Prometheus server scraping `targets` every second; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let targets = targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: kvstore\n    static_configs:\n      - targets: [{targets}]\n"
            ),
        )
        .unwrap();
        let port = free_port("127.0.0.1");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// Evaluates `expr` now; the result vector.
    async fn query(&self, client: &reqwest::Client, expr: &str) -> Option<Vec<Value>> {
        let resp = client
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .ok()?;
        let body: Value = resp.json().await.ok()?;
        assert_eq!(body["status"], "success", "query `{expr}` failed: {body}");
        body["data"]["result"].as_array().cloned()
    }

    async fn targets_up(&self, client: &reqwest::Client) -> usize {
        self.query(client, "sum(up{job=\"kvstore\"})")
            .await
            .and_then(|r| r.first().cloned())
            .and_then(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()))
            .unwrap_or(0.0) as usize
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every `expr` of every panel target in the dashboards, with Grafana's variables
/// replaced by what the dashboards would use: all nodes, a one-minute window.
fn dashboard_queries() -> Vec<(String, String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("dashboards/") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let dashboard: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                let expr = expr
                    .replace("$__rate_interval", "30s")
                    .replace("$instance", ".*");
                queries.push((
                    dashboard["title"].as_str().unwrap().to_string(),
                    panel["title"].as_str().unwrap().to_string(),
                    expr,
                ));
            }
        }
    }
    queries
}

async fn traffic(cluster: &Cluster, nodes: &[u64], rounds: usize, tag: &str) {
    for i in 0..rounds {
        let node = nodes[i % nodes.len()];
        let _ = put_json(
            &cluster.client,
            &cluster.url(node, &format!("/kv/{tag}{i}")),
            "v",
        )
        .await;
        let _ = get_json(
            &cluster.client,
            &cluster.url(node, &format!("/kv/{tag}{i}")),
        )
        .await;
        let _ = get_json(&cluster.client, &cluster.url(node, "/kv/missing")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_and_shows_a_leader_change() {
    if !tools_available() {
        return;
    }
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(10))
        .await;
    let targets: Vec<String> = [1, 2, 3]
        .iter()
        .map(|id| {
            cluster
                .url(*id, "")
                .trim_start_matches("http://")
                .to_string()
        })
        .collect();
    let prometheus = Prometheus::start(&targets);
    let client = reqwest::Client::new();

    // promtool accepts every node's metrics as they are.
    for id in [1, 2, 3] {
        let body = cluster
            .client
            .get(cluster.url(id, "/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "node {id}: {report}"
        );
    }

    traffic(&cluster, &[1, 2, 3], 60, "a").await;
    eventually(
        Duration::from_secs(30),
        "Prometheus to scrape all three nodes",
        || async { (prometheus.targets_up(&client).await == 3).then_some(()) },
    )
    .await;
    let queries = dashboard_queries();
    assert!(
        queries.len() >= 20,
        "dashboards hold {} queries",
        queries.len()
    );
    let leader_changes = queries
        .iter()
        .find(|(_, panel, _)| panel == "Leader changes")
        .map(|(_, _, expr)| expr.clone())
        .expect("the raft dashboard has a `Leader changes` panel");
    let leader_changes = leader_changes.as_str();
    let total_changes = |r: Option<Vec<Value>>| {
        r.and_then(|r| r.first().cloned())
            .and_then(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()))
    };
    // Let a few scrapes pass so rates and increases have two samples.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = total_changes(prometheus.query(&client, leader_changes).await).unwrap_or(0.0);

    cluster.kill(leader);
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    cluster
        .wait_leader(&survivors, Duration::from_secs(10))
        .await;
    traffic(&cluster, &survivors, 60, "b").await;

    let after = eventually(
        Duration::from_secs(30),
        "the leader change in Prometheus",
        || async {
            let value = total_changes(prometheus.query(&client, leader_changes).await)?;
            (value > before).then_some(value)
        },
    )
    .await;
    assert!(after > before);

    let queries = dashboard_queries();
    assert!(
        queries.len() >= 20,
        "dashboards hold {} queries",
        queries.len()
    );
    let panel_exprs: Vec<&str> = queries.iter().map(|(_, _, e)| e.as_str()).collect();
    assert!(
        panel_exprs.contains(&leader_changes),
        "the raft dashboard's leader-changes panel must use `{leader_changes}`"
    );
    for (dashboard, panel, expr) in &queries {
        let result = eventually(
            Duration::from_secs(20),
            &format!("data for `{expr}`"),
            || async {
                prometheus
                    .query(&client, expr)
                    .await
                    .filter(|r| !r.is_empty())
            },
        )
        .await;
        assert!(
            !result.is_empty(),
            "{dashboard} / {panel}: `{expr}` returned nothing"
        );
    }
}
