//! Telemetry as a user meets it, with three kvstore processes:
//! - `/metrics` passes `promtool check metrics`, and every metric family has `# HELP`
//!   and `# TYPE`, in scrapes taken after each class of error answer, after a leader
//!   change and after a snapshot;
//! - spans are exported over OTLP/HTTP to a receiver in this test, which decodes the
//!   protobuf requests: each node's spans carry its own `service.instance.id`, the
//!   version and what `OTEL_RESOURCE_ATTRIBUTES` adds.
//!
//! Without `promtool` the promtool part is skipped with a message (the HELP/TYPE check
//! still runs), unless `KV_REQUIRE_PROMETHEUS` is set (CI sets it).

mod processes;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use processes::{clean_command, eventually, free_port, kvstore_bin, leader_of, Process};
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const READER: &str = "reader-token";
const WRITER: &str = "writer-token";
const ADMIN: &str = "admin-token";
const MAX_VALUE_BYTES: usize = 1024;

/// Three nodes on loopback that form a cluster by themselves.
struct Cluster {
    /// Behind a lock so that a test can kill one while it holds the cluster shared.
    nodes: BTreeMap<u64, Mutex<Process>>,
    apis: BTreeMap<u64, String>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    /// A failed test shows what each node printed last.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in self.nodes.values() {
                if let Ok(node) = node.lock() {
                    eprintln!("--- {} ---\n{}", node.name, node.tail());
                }
            }
        }
    }
}

impl Cluster {
    /// Starts three nodes with `extra` environment variables on each (`{id}` in a
    /// value becomes the node's id).
    fn start(extra: &[(&str, &str)]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: BTreeMap<u64, (u16, u16)> =
            (1..=3).map(|id| (id, (free_port(), free_port()))).collect();
        let members = ports
            .iter()
            .map(|(id, (api, raft))| format!("{id}=http://127.0.0.1:{api}|http://127.0.0.1:{raft}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = BTreeMap::new();
        let mut apis = BTreeMap::new();
        for (id, (api, raft)) in &ports {
            let mut command = clean_command(kvstore_bin());
            command
                .env("KV_RAFT_NODE_ID", id.to_string())
                .env("KV_SERVER_HOST", "127.0.0.1")
                .env("KV_SERVER_PORT", api.to_string())
                .env("KV_CLUSTER_RAFT_HOST", "127.0.0.1")
                .env("KV_CLUSTER_RAFT_PORT", raft.to_string())
                .env("KV_CLUSTER_INITIAL_MEMBERS", &members)
                .env("KV_CLUSTER_INSECURE", "true")
                .env("KV_STORAGE_DATA_DIR", dir.path().join(format!("node{id}")))
                .env(
                    "KV_AUTH_TOKENS",
                    format!("{READER}:read,{WRITER}:write,{ADMIN}:admin"),
                )
                .env("KV_SERVER_MAX_VALUE_BYTES", MAX_VALUE_BYTES.to_string())
                .env("KV_LOG_LEVEL", "warn");
            for (name, value) in extra {
                command.env(name, value.replace("{id}", &id.to_string()));
            }
            nodes.insert(
                *id,
                Mutex::new(Process::spawn(&format!("node{id}"), command, dir.path())),
            );
            apis.insert(*id, format!("http://127.0.0.1:{api}"));
        }
        Cluster {
            nodes,
            apis,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            _dir: dir,
        }
    }

    /// SIGKILL node `id`.
    fn kill(&self, id: u64) {
        self.nodes[&id].lock().unwrap().kill();
    }

    fn api(&self, id: u64) -> &str {
        &self.apis[&id]
    }

    /// The leader all of `ids` agree on, one of them (a killed leader is still named
    /// until the survivors' lease runs out).
    async fn leader(&self, ids: &[u64]) -> u64 {
        eventually(
            Duration::from_secs(30),
            "a leader all nodes agree on",
            || async {
                let mut seen = BTreeSet::new();
                for id in ids {
                    seen.insert(leader_of(&self.client, self.api(*id), Some(READER)).await?);
                }
                let leader = *seen.first()?;
                (seen.len() == 1 && ids.contains(&leader)).then_some(leader)
            },
        )
        .await
    }

    async fn scrape(&self, id: u64) -> String {
        self.client
            .get(format!("{}/metrics", self.api(id)))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// Sends `req`; its status and JSON `code` (empty for a success).
async fn answer(req: reqwest::RequestBuilder) -> (u16, String) {
    let resp = req.send().await.expect("an answer");
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    (
        status,
        body["code"].as_str().unwrap_or_default().to_string(),
    )
}

/// Every sample's family has `# TYPE` and `# HELP` lines: the complaint, if any.
fn families_without_help_or_type(scrape: &str) -> Vec<String> {
    let mut types = BTreeMap::new();
    let mut helps = BTreeSet::new();
    for line in scrape.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("#"), Some("TYPE"), Some(name)) => {
                types.insert(
                    name.to_string(),
                    words.next().unwrap_or_default().to_string(),
                );
            }
            (Some("#"), Some("HELP"), Some(name)) => {
                helps.insert(name.to_string());
            }
            _ => {}
        }
    }
    let mut problems = BTreeSet::new();
    for line in scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let sample = line.split(['{', ' ']).next().unwrap_or_default();
        let family = if types.contains_key(sample) {
            sample.to_string()
        } else {
            // A histogram's or summary's series carry a suffix after the family name.
            ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|suffix| sample.strip_suffix(suffix))
                .find(|base| {
                    matches!(
                        types.get(*base).map(String::as_str),
                        Some("histogram" | "summary")
                    )
                })
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    problems.insert(format!("{sample}: no # TYPE"));
                    sample.to_string()
                })
        };
        if !helps.contains(&family) {
            problems.insert(format!("{family}: no # HELP"));
        }
    }
    problems.into_iter().collect()
}

/// `promtool check metrics` on `scrape`: its complaints, or `None` without promtool.
fn promtool_check_metrics(scrape: &str) -> Option<String> {
    let mut check = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            assert!(
                std::env::var_os("KV_REQUIRE_PROMETHEUS").is_none(),
                "KV_REQUIRE_PROMETHEUS is set but promtool cannot run: {e}"
            );
            return None;
        }
    };
    check
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(if out.status.success() {
        report.trim().to_string()
    } else {
        format!("exit {}: {report}", out.status)
    })
}

/// Scrapes node `id` after `moment` and checks the scrape; `expect` must be in it (the
/// series that shows the event was counted).
async fn check_scrape(cluster: &Cluster, id: u64, moment: &str, expect: &str) {
    let scrape = cluster.scrape(id).await;
    assert!(
        scrape.contains(expect),
        "after {moment}, node {id}'s scrape has no `{expect}`:\n{scrape}"
    );
    let problems = families_without_help_or_type(&scrape);
    assert!(
        problems.is_empty(),
        "after {moment}, node {id}: {problems:?}"
    );
    match promtool_check_metrics(&scrape) {
        Some(report) => assert!(
            report.is_empty(),
            "after {moment}, promtool check metrics on node {id}: {report}"
        ),
        None => {
            eprintln!("SKIPPED (promtool not installed): promtool check metrics after {moment}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_after_every_error_class_a_leader_change_and_a_snapshot() {
    let cluster = Cluster::start(&[
        ("KV_RAFT_SNAPSHOT_INTERVAL", "20"),
        // A write without a leader waits this long for one before it is refused.
        ("KV_SERVER_REQUEST_TIMEOUT", "2s"),
    ]);
    let leader = cluster.leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let c = cluster.client.clone();
    let kv = |id: u64, key: &str| format!("{}/kv/{key}", cluster.api(id));

    // The first scrape, before anything happened.
    check_scrape(&cluster, follower, "start-up", "kvstore_node_info").await;

    let put = |id: u64, key: &str, token: &str, body: String| {
        c.put(kv(id, key))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
    };
    let big = "x".repeat(MAX_VALUE_BYTES + 1);
    // Each class of error answer a client can cause, on a follower (which answers
    // these itself) and, for the write path, through forwarding.
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("no token", c.get(kv(follower, "a")), 401, "UNAUTHORIZED"),
        (
            "a read token on a write",
            put(follower, "a", READER, r#"{"value":"v"}"#.into()),
            403,
            "FORBIDDEN",
        ),
        (
            "a missing key",
            c.get(kv(follower, "missing")).bearer_auth(READER),
            404,
            "KEY_NOT_FOUND",
        ),
        (
            "an unknown route",
            c.get(format!("{}/nowhere", cluster.api(follower)))
                .bearer_auth(READER),
            404,
            "NOT_FOUND",
        ),
        (
            "broken JSON",
            put(follower, "a", WRITER, "{".into()),
            400,
            "INVALID_JSON",
        ),
        (
            "an empty value",
            put(follower, "a", WRITER, r#"{"value":""}"#.into()),
            400,
            "EMPTY_VALUE",
        ),
        (
            "a value too large",
            put(follower, "a", WRITER, format!(r#"{{"value":"{big}"}}"#)),
            413,
            "VALUE_TOO_LARGE",
        ),
        (
            "a membership change naming no member",
            c.post(format!("{}/cluster/voters", cluster.api(follower)))
                .bearer_auth(ADMIN)
                .json(&serde_json::json!({"ids": [99]})),
            400,
            "INVALID_MEMBERSHIP",
        ),
    ];
    for (what, req, status, code) in cases {
        assert_eq!(answer(req).await, (status, code.to_string()), "{what}");
        check_scrape(&cluster, follower, what, &format!("code=\"{code}\"")).await;
    }

    // A snapshot: more writes than raft.snapshot_interval.
    for i in 0..30 {
        let (status, code) = answer(put(
            follower,
            &format!("k{i}"),
            WRITER,
            r#"{"value":"v"}"#.into(),
        ))
        .await;
        assert_eq!(status, 201, "write {i}: {code}");
    }
    eventually(
        Duration::from_secs(20),
        "a snapshot on the leader",
        || async {
            let scrape = cluster.scrape(leader).await;
            scrape
                .lines()
                .any(|l| l.starts_with("kvstore_raft_snapshots_built_total") && !l.ends_with(" 0"))
                .then_some(())
        },
    )
    .await;
    check_scrape(
        &cluster,
        leader,
        "a snapshot",
        "kvstore_raft_snapshot_build_duration_seconds_bucket",
    )
    .await;

    // A leader change: the leader is killed, the others elect one of them.
    cluster.kill(leader);
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let new_leader = cluster.leader(&survivors).await;
    assert_ne!(new_leader, leader);
    let other = survivors.into_iter().find(|id| *id != new_leader).unwrap();
    for id in [new_leader, other] {
        check_scrape(
            &cluster,
            id,
            "a leader change",
            "kvstore_raft_leader_changes_total",
        )
        .await;
    }

    // No quorum: the last node answers 503 NO_LEADER once its lease has run out.
    cluster.kill(new_leader);
    eventually(
        Duration::from_secs(20),
        "503 NO_LEADER from the last node",
        || async {
            // Without a leader a write waits server.request_timeout for one, then is
            // refused.
            let resp = put(other, "after", WRITER, r#"{"value":"v"}"#.into())
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .ok()?;
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.ok()?;
            (status == 503 && body["code"] == "NO_LEADER").then_some(())
        },
    )
    .await;
    check_scrape(&cluster, other, "503 NO_LEADER", "code=\"NO_LEADER\"").await;
}

/// What the receiver got: one entry per export request.
#[derive(Default)]
struct Received {
    requests: Vec<(String, String, ExportTraceServiceRequest)>,
}

/// An OTLP/HTTP receiver: answers every POST with 200 and keeps the decoded
/// `ExportTraceServiceRequest` with its path and content type. A body that does not
/// decode as the protocol fails the test.
async fn otlp_http_receiver() -> (u16, Arc<Mutex<Received>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Received::default()));
    let sink = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                // HTTP/1.1 with keep-alive: one request after the other.
                loop {
                    let mut request_line = String::new();
                    if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_string();
                    let mut length = 0usize;
                    let mut content_type = String::new();
                    loop {
                        let mut header = String::new();
                        stream.read_line(&mut header).await.unwrap();
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        let (name, value) = header.split_once(':').unwrap_or((header, ""));
                        match name.to_ascii_lowercase().as_str() {
                            "content-length" => length = value.trim().parse().unwrap(),
                            "content-type" => content_type = value.trim().to_string(),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; length];
                    stream.read_exact(&mut body).await.unwrap();
                    let request = ExportTraceServiceRequest::decode(body.as_slice())
                        .expect("an OTLP ExportTraceServiceRequest in protobuf");
                    sink.lock()
                        .unwrap()
                        .requests
                        .push((path, content_type, request));
                    stream
                        .get_mut()
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                        )
                        .await
                        .unwrap();
                }
            });
        }
    });
    (port, received)
}

fn resource_attr(spans: &ResourceSpans, key: &str) -> Option<String> {
    spans
        .resource
        .as_ref()?
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()
        .map(|v| match v {
            any_value::Value::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
}

/// The version in service/Cargo.toml: the one the binary reports.
fn kvstore_version() -> String {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../service/Cargo.toml");
    std::fs::read_to_string(manifest)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("a version in service/Cargo.toml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_over_otlp_http_and_name_the_node_they_came_from() {
    let (port, received) = otlp_http_receiver().await;
    let endpoint = format!("http://127.0.0.1:{port}");
    let cluster = Cluster::start(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        // A base endpoint: the exporter must add /v1/traces.
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=otlp-test,k8s.pod.name=kvstore-{id}",
        ),
        // Export within a fraction of a second rather than the default five.
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ]);
    let leader = cluster.leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    // A write to a follower: spans on the follower and on the leader, one trace.
    let resp = cluster
        .client
        .put(format!("{}/kv/traced", cluster.api(follower)))
        .bearer_auth(WRITER)
        .json(&serde_json::json!({"value": "v"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    let version = kvstore_version();
    let instances = eventually(
        Duration::from_secs(20),
        "spans from the follower and the leader at the receiver",
        || async {
            let received = received.lock().unwrap();
            // Trace id -> the instances whose spans carry it.
            let mut traces: BTreeMap<Vec<u8>, BTreeSet<String>> = BTreeMap::new();
            for (_, _, request) in &received.requests {
                for resource_spans in &request.resource_spans {
                    let instance = resource_attr(resource_spans, "service.instance.id")?;
                    for scope in &resource_spans.scope_spans {
                        for span in &scope.spans {
                            traces
                                .entry(span.trace_id.clone())
                                .or_default()
                                .insert(instance.clone());
                        }
                    }
                }
            }
            traces.into_values().find(|instances| {
                instances.contains(&follower.to_string()) && instances.contains(&leader.to_string())
            })
        },
    )
    .await;
    assert!(instances.len() >= 2, "{instances:?}");

    let received = received.lock().unwrap();
    for (path, content_type, request) in &received.requests {
        assert_eq!(path, "/v1/traces");
        assert_eq!(content_type, "application/x-protobuf");
        for spans in &request.resource_spans {
            let instance =
                resource_attr(spans, "service.instance.id").expect("service.instance.id");
            assert!(["1", "2", "3"].contains(&instance.as_str()), "{instance}");
            assert_eq!(
                resource_attr(spans, "service.name").as_deref(),
                Some("kvstore")
            );
            assert_eq!(
                resource_attr(spans, "service.version"),
                Some(version.clone())
            );
            // OTEL_RESOURCE_ATTRIBUTES, as each process had it.
            assert_eq!(
                resource_attr(spans, "deployment.environment.name").as_deref(),
                Some("otlp-test")
            );
            assert_eq!(
                resource_attr(spans, "k8s.pod.name"),
                Some(format!("kvstore-{instance}"))
            );
        }
    }
}
