//! Tests of the real `kvstore` binary: crash safety under SIGKILL, clean SIGTERM
//! shutdown, configuration errors, logs, and the command line.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{command, run_to_exit, wait_ready, NodeProcess as Node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    crate::support::sigkill_during_writes_loses_nothing(dir.path(), &[]).await;
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut node = Node::start(dir.path(), &[]);
    wait_ready(&node, &client).await;
    let resp = client
        .put(node.url("/kv/durable"))
        .json(&serde_json::json!({"value": "yes"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    node.signal("TERM");
    let status = node.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}");
    let messages: Vec<String> = node
        .log_lines()
        .iter()
        .filter_map(|l| l["message"].as_str().map(String::from))
        .collect();
    assert!(
        messages.iter().any(|m| m == "SIGTERM received"),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m == "shutdown complete"),
        "{messages:?}"
    );
    drop(node);

    let node = Node::start(dir.path(), &[]);
    wait_ready(&node, &client).await;
    let resp = client.get(node.url("/kv/durable")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["value"], "yes");
}

#[tokio::test]
async fn logging_file_receives_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let log_file = dir.path().join("kv.log");
    let data = dir.path().join("data");
    let mut child = command(&data, &[("KV_LOG_FILE", log_file.to_str().unwrap())])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let lines = logged_until_serving(&log_file, &mut child).await;
    assert!(lines.iter().any(|l| l["message"] == "starting kvstore"));
}

/// The JSON lines of `log_file` once it has the line that says the node serves; the
/// node is then killed.
async fn logged_until_serving(log_file: &Path, child: &mut std::process::Child) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let text = std::fs::read_to_string(log_file).unwrap_or_default();
        if text.lines().any(|l| l.contains("serving the client API")) {
            break text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the node exited with {status} before it served");
        }
        assert!(
            Instant::now() < deadline,
            "no start-up line in {log_file:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    lines
}

/// `logging.file` in a directory that does not exist yet (as in a fresh clone's
/// `config/cluster/node1.yaml`): the node creates the directory, and its start-up line
/// names the config file as plain text.
#[tokio::test]
async fn a_missing_log_directory_is_created_and_the_start_up_line_names_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let log_file = dir.path().join("logs/node1/kv.log");
    let config = dir.path().join("node.yaml");
    std::fs::write(
        &config,
        format!("logging:\n  file: {:?}\n", log_file.to_str().unwrap()),
    )
    .unwrap();
    let mut child = command(&dir.path().join("data"), &[])
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let lines = logged_until_serving(&log_file, &mut child).await;
    let start = lines
        .iter()
        .find(|l| l["message"] == "starting kvstore")
        .expect("a start-up line");
    assert_eq!(start["config"], config.to_str().unwrap(), "{start}");
}

/// A node that knows no leader (one waiting to be added to a cluster) says so in
/// `/status`, as `/ready` does.
#[tokio::test]
async fn status_is_degraded_while_no_leader_is_known() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let node = Node::start(
        dir.path(),
        &[
            ("KV_CLUSTER_BOOTSTRAP", "false"),
            ("KV_CLUSTER_INSECURE", "true"),
        ],
    );
    let resp = client.get(node.url("/status")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["server"], "kvstore", "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    let ready = client.get(node.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
}

#[test]
fn invalid_config_exits_non_zero_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let bad_data_dir = not_a_dir.join("data");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("KV_STORAGE_TYPE", "s3")], "storage.type"),
        (vec![("KV_SERVER_PORT", "http")], "server.port"),
        (vec![("KV_SERVER_PORT", "99999")], "server.port"),
        (
            vec![("KV_RAFT_ELECTION_TIMEOUT", "soon")],
            "raft.election_timeout",
        ),
        (
            vec![("KV_SERVER_SHUTDOWN_TIMEOUT", "3 fortnights")],
            "server.shutdown_timeout",
        ),
        (vec![("KV_LOG_LEVEL", "very=loud=please")], "logging.level"),
        (
            vec![("KV_STORAGE_DATA_DIR", bad_data_dir.to_str().unwrap())],
            "storage.data_dir",
        ),
    ];
    for (env, setting) in cases {
        let (status, _, stderr) = run_to_exit(&dir.path().join("d"), &env, &[]);
        assert!(!status.success(), "{env:?} should fail");
        assert!(
            stderr.contains(setting),
            "{env:?}: stderr does not name {setting}: {stderr}"
        );
    }
}

/// A node with peers and no `cluster.secret` would open its Raft listener to anyone who
/// reaches it: it exits non-zero before serving, naming `cluster.secret` and
/// `cluster.insecure`. With `cluster.insecure: true` it starts and says what is open in
/// one warning, as a single node without a secret does; with a secret, no warning.
#[test]
fn a_node_with_peers_starts_only_with_a_cluster_secret_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    // The peer need not exist: the node starts and waits for it.
    let peers = (
        "KV_CLUSTER_INITIAL_MEMBERS",
        "1=http://127.0.0.1:1|http://127.0.0.1:2,2=http://127.0.0.1:3|http://127.0.0.1:4",
    );
    let joining = ("KV_CLUSTER_BOOTSTRAP", "false");
    for (n, env) in [vec![peers], vec![joining]].into_iter().enumerate() {
        let data = dir.path().join(format!("refused{n}"));
        let (status, stdout, stderr) = run_to_exit(&data, &env, &[]);
        assert!(!status.success(), "{env:?} started without a secret");
        assert!(
            stderr.contains("`cluster.secret`") && stderr.contains("cluster.insecure"),
            "{env:?}: {stderr}"
        );
        assert!(!stdout.contains("serving the client API"), "{stdout}");
    }

    let warning = |node: &Node| {
        node.log_lines()
            .into_iter()
            .filter(|l| {
                l["level"] == "WARN"
                    && l["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("cluster.secret is not set"))
            })
            .count()
    };
    for (n, env) in [vec![peers], vec![joining]].into_iter().enumerate() {
        let env = [env, vec![("KV_CLUSTER_INSECURE", "true")]].concat();
        let node = Node::start(&dir.path().join(format!("insecure{n}")), &env);
        assert_eq!(warning(&node), 1, "{env:?}");
    }
    let single = Node::start(&dir.path().join("single"), &[]);
    assert_eq!(warning(&single), 1);
    let secured = Node::start(
        &dir.path().join("secured"),
        &[peers, ("KV_CLUSTER_SECRET", "correct horse")],
    );
    assert_eq!(warning(&secured), 0);
}

#[test]
fn a_corrupt_database_file_exits_non_zero_and_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let file = data.join("kvstore.redb");
    let garbage: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &garbage).unwrap();
    let (status, _, stderr) = run_to_exit(&data, &[], &[]);
    assert!(!status.success(), "started on a corrupt file");
    assert!(stderr.contains("kvstore.redb"), "{stderr}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        garbage,
        "the file was changed"
    );
}

#[test]
fn a_port_in_use_exits_non_zero_naming_the_port() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (status, _, stderr) = run_to_exit(dir.path(), &[("KV_SERVER_PORT", &port)], &[]);
    assert!(!status.success());
    assert!(stderr.contains("server.port"), "{stderr}");
}

#[test]
fn missing_config_file_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (status, _, stderr) = run_to_exit(dir.path(), &[], &["--config", "/no/such.yaml"]);
    assert!(!status.success());
    assert!(stderr.contains("/no/such.yaml"), "{stderr}");
    // KV_CONFIG names the file as well.
    let (status, _, stderr) = run_to_exit(dir.path(), &[("KV_CONFIG", "/no/other.yaml")], &[]);
    assert!(!status.success());
    assert!(stderr.contains("/no/other.yaml"), "{stderr}");
}

#[test]
fn help_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stdout, _) = run_to_exit(dir.path(), &[], &["--help"]);
    assert!(status.success());
    assert!(stdout.contains("--config"), "{stdout}");
    let (status, stdout, _) = run_to_exit(dir.path(), &[], &["--version"]);
    assert!(status.success());
    assert_eq!(
        stdout.trim(),
        format!("kvstore {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn shipped_config_files_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let settings =
        kvstore::config::Settings::load_from(Some(&root.join("config/server.yaml")), |_| None)
            .expect("config/server.yaml");
    assert_eq!(settings.server.port, 8080);
    assert_eq!(settings.storage.kind, kvstore::config::StorageType::File);
    let settings =
        kvstore::config::Settings::load_from(Some(&root.join("config/postgres.yaml")), |_| None)
            .expect("config/postgres.yaml");
    assert_eq!(
        settings.storage.kind,
        kvstore::config::StorageType::Database
    );
    assert_eq!(settings.database.database, "kvstore");
    for node in 1..=3 {
        let file = root.join(format!("config/cluster/node{node}.yaml"));
        let settings = kvstore::config::Settings::load_from(Some(&file), |_| None)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(settings.raft.node_id, node);
        assert_eq!(settings.cluster.initial_members.len(), 3);
    }
}

#[test]
fn readme_documents_every_environment_variable() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    for (var, setting) in kvstore::config::ENV_OVERRIDES {
        assert!(
            readme.contains(&format!("`{var}`")),
            "README does not document {var}"
        );
        assert!(
            readme.contains(&format!("`{setting}`")),
            "README does not document {setting}"
        );
    }
}

/// SIGTERM while a request is in flight: the request still completes, then the
/// process exits 0.
#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut node = Node::start(dir.path(), &[("KV_LOG_LEVEL", "info,kvstore::api=debug")]);
    wait_ready(&node, &client).await;

    let body = b"{\"value\": \"in flight\"}";
    let mut stream = tokio::net::TcpStream::connect(&node.addr).await.unwrap();
    let head = format!(
        "PUT /kv/inflight HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..5]).await.unwrap();
    // Wait until the server is reading this request's body before signalling.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !node
        .log_lines()
        .iter()
        .any(|l| l["message"] == "reading request body")
    {
        assert!(Instant::now() < deadline, "the server never read the body");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !node
        .log_lines()
        .iter()
        .any(|l| l["message"] == "SIGTERM received")
    {
        assert!(Instant::now() < deadline, "SIGTERM not logged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stream.write_all(&body[5..]).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("response within 10 s")
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let status = node.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}

/// With tracing on, log lines inside a request carry the trace and span ids, and an
/// incoming W3C `traceparent` is honoured: the request joins the caller's trace, and
/// its access-log line names that trace.
#[tokio::test]
async fn request_logs_carry_the_callers_trace_id() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    // Spans need an exporter to get ids; nothing listens there, which is fine.
    let node = Node::start(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("KV_LOG_ACCESS_LOG", "true"),
            ("KV_LOG_LEVEL", "info,kvstore::api=debug"),
        ],
    );
    wait_ready(&node, &client).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = client
        .put(node.url("/kv/traced"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({"value": "v"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let line =
        crate::support::eventually(Duration::from_secs(5), "the request's log line", || async {
            node.log_lines()
                .into_iter()
                .find(|l| l["message"] == "request" && l["path"] == "/kv/traced")
        })
        .await;
    assert_eq!(line["trace_id"], trace_id, "{line}");
    let inside = node
        .log_lines()
        .into_iter()
        .find(|l| l["message"] == "reading request body")
        .expect("a line logged inside the request");
    assert_eq!(inside["span"]["trace_id"], trace_id, "{inside}");
    let span_id = inside["span"]["span_id"].as_str().expect("span_id");
    assert_eq!(span_id.len(), 16, "{inside}");
    assert_ne!(
        span_id, "00f067aa0ba902b7",
        "the request has a span of its own"
    );
}

/// Bearer tokens never reach the logs, at any level: not from requests that carry
/// them (accepted, refused or unknown), not from the settings. A bad `auth.tokens`
/// stops the node naming the setting, without quoting the token.
#[tokio::test]
async fn bearer_tokens_are_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let node = Node::start(
        dir.path(),
        &[
            ("KV_AUTH_TOKENS", "tok-admin-5b1e:admin,tok-read-90c4:read"),
            ("KV_LOG_LEVEL", "trace,openraft=info"),
            ("KV_LOG_ACCESS_LOG", "true"),
        ],
    );
    wait_ready(&node, &client).await;
    let put = |token: &str| {
        client
            .put(node.url("/kv/guarded"))
            .bearer_auth(token)
            .json(&serde_json::json!({"value": "v"}))
            .send()
    };
    assert_eq!(put("tok-admin-5b1e").await.unwrap().status(), 201);
    assert_eq!(put("tok-read-90c4").await.unwrap().status(), 403);
    assert_eq!(put("tok-unknown-77aa").await.unwrap().status(), 401);
    let resp = client
        .get(node.url("/kv/guarded"))
        .header("authorization", "Basic tok-read-90c4")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Every one of those requests has logged its line.
    crate::support::eventually(Duration::from_secs(5), "the request log lines", || async {
        let statuses: Vec<u64> = node
            .log_lines()
            .iter()
            .filter(|l| l["message"] == "request" && l["path"] == "/kv/guarded")
            .filter_map(|l| l["status"].as_u64())
            .collect();
        (statuses.len() >= 4).then_some(statuses)
    })
    .await;
    for line in node.log_lines() {
        let line = line.to_string();
        assert!(!line.contains("tok-"), "a token was logged: {line}");
    }

    let (status, stdout, stderr) = run_to_exit(
        &dir.path().join("bad"),
        &[("KV_AUTH_TOKENS", "tok-bad-3f3f:root")],
        &[],
    );
    assert!(!status.success());
    assert!(stderr.contains("auth.tokens"), "{stderr}");
    assert!(!format!("{stdout}{stderr}").contains("tok-"), "{stderr}");
}

/// Fails unless every key in `keys` answers 200 on `node`; `when` goes in the message.
async fn assert_present(client: &reqwest::Client, node: &Node, keys: &[String], when: &str) {
    for key in keys {
        let resp = client
            .get(node.url(&format!("/kv/{key}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "acknowledged {key} lost {when}");
    }
}

/// PUTs `value` to `url`: the status and the JSON body of the answer.
async fn put_value(client: &reqwest::Client, url: String, value: &str) -> (u16, Value) {
    let resp = client
        .put(url)
        .json(&serde_json::json!({ "value": value }))
        .send()
        .await
        .expect("an answer");
    let status = resp.status().as_u16();
    (status, resp.json::<Value>().await.expect("a JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_values_with_507_and_recovers_without_a_restart() {
    let Some(disk) = crate::support::small_disk_or_skip("48m") else {
        return;
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let node = Node::start(
        disk.dir.path(),
        &[("KV_STORAGE_MIN_FREE_BYTES", "25165824")], // 24 MiB of 48 MiB
    );
    wait_ready(&node, &client).await;
    let value = "v".repeat(64 * 1024);
    let put = |key: String| put_value(&client, node.url(&format!("/kv/{key}")), &value);

    // Fill it until new values are refused.
    let mut acked = Vec::new();
    let refused = loop {
        assert!(
            acked.len() < 1000,
            "1000 values of 64 KiB accepted on 48 MiB"
        );
        let key = format!("fill{}", acked.len());
        match put(key.clone()).await {
            (201, _) => acked.push(key),
            (status, body) => break (status, body),
        }
    };
    assert_eq!(refused.0, 507, "{}", refused.1);
    assert_eq!(refused.1["code"], "NO_SPACE", "{}", refused.1);
    assert!(!acked.is_empty());
    // Reads, deletes and the probes still work.
    let resp = client
        .get(node.url(&format!("/kv/{}", acked[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client
        .delete(node.url(&format!("/kv/{}", acked[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let gone = acked.remove(0);
    let resp = client.get(node.url("/ready")).send().await.unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let metrics = crate::support::get_text(&client, &node.url("/metrics"))
        .await
        .unwrap();
    assert!(
        metrics.contains("kvstore_storage_out_of_space 1"),
        "{metrics}"
    );

    // Room again: writes succeed without a restart.
    disk.resize("128m");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match put("after".into()).await {
            (201, _) => break,
            (status, body) => {
                assert_eq!(status, 507, "{body}");
                assert!(
                    Instant::now() < deadline,
                    "still refused after room was made"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Nothing acknowledged was lost.
    assert_present(&client, &node, &acked, "").await;
    let resp = client
        .get(node.url(&format!("/kv/{gone}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

/// With the quota and the free-space floor off, the disk really fills: the log or the
/// state machine gets `ENOSPC`. The node must not stop for good: it refuses new values
/// at once (507), says it is not ready, keeps answering reads, retries the failed write
/// by itself, and takes writes again once there is room, with every acknowledged value
/// kept, also across a restart (no torn record left in the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_enospc_refuses_new_values_and_recovers_by_itself() {
    let Some(disk) = crate::support::small_disk_or_skip("24m") else {
        return;
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let env = [
        ("KV_STORAGE_MIN_FREE_BYTES", "0"),
        ("KV_STORAGE_QUOTA_BYTES", "0"),
        ("KV_SERVER_REQUEST_TIMEOUT", "2s"),
    ];
    let mut node = Node::start(disk.dir.path(), &env);
    wait_ready(&node, &client).await;
    let value = "v".repeat(64 * 1024);
    let put = |node: &Node, key: &str| put_value(&client, node.url(&format!("/kv/{key}")), &value);

    // Fill it until new values are refused. A write under way when the disk filled
    // may end without an answer (its outcome unknown); it is not counted.
    let mut acked = Vec::new();
    let mut attempts = 0;
    let refused = loop {
        attempts += 1;
        assert!(attempts < 1000, "1000 values of 64 KiB accepted on 24 MiB");
        let key = format!("fill{attempts}");
        match put(&node, &key).await {
            (201, _) => acked.push(key),
            (507, body) => break body,
            (status, body) => {
                assert!(
                    !node.logged_containing("raft has stopped") && status != 500,
                    "{status} {body}"
                );
            }
        }
    };
    assert_eq!(refused["code"], "NO_SPACE", "{refused}");
    assert!(!acked.is_empty());
    let text = refused.to_string();
    assert!(
        !text.contains("Error {") && !text.contains("Os {"),
        "{text}"
    );

    // Reads are answered; the node says it cannot take writes.
    let resp = client
        .get(node.url(&format!("/kv/{}", acked[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client.get(node.url("/ready")).send().await.unwrap();
    assert_eq!(resp.status(), 503, "{}", resp.text().await.unwrap());
    crate::support::eventually(Duration::from_secs(5), "the metric to show it", || async {
        let metrics = crate::support::get_text(&client, &node.url("/metrics")).await?;
        metrics
            .contains("kvstore_storage_out_of_space 1")
            .then_some(())
    })
    .await;
    assert_eq!(put(&node, "refused").await.0, 507);

    // Room again: the node finds out by itself, without a restart.
    disk.resize("128m");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match put(&node, "after").await {
            (201, _) => break,
            (status, body) => {
                assert!(
                    Instant::now() < deadline,
                    "still {status} {body} after room was made"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    acked.push("after".into());
    crate::support::eventually(Duration::from_secs(10), "the node to be ready", || async {
        let resp = client.get(node.url("/ready")).send().await.ok()?;
        (resp.status() == 200).then_some(())
    })
    .await;
    crate::support::eventually(Duration::from_secs(5), "the metric to clear", || async {
        let metrics = crate::support::get_text(&client, &node.url("/metrics")).await?;
        metrics
            .contains("kvstore_storage_out_of_space 0")
            .then_some(())
    })
    .await;

    // Nothing acknowledged was lost, before and after a restart.
    for round in ["running", "restarted"] {
        assert_present(&client, &node, &acked, round).await;
        if round == "running" {
            node.signal("TERM");
            assert!(node.wait_exit(Duration::from_secs(20)).success());
            node = Node::start(disk.dir.path(), &env);
            wait_ready(&node, &client).await;
        }
    }
}
