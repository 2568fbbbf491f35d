//! What the real `kvstore` binary logs about requests, and how its log file and log
//! writer behave: no line per request by default, the access log when asked, slow
//! requests and server errors at `warn` (rate-limited), openraft kept at `warn`, the
//! log file reopened on SIGHUP, and lines dropped (and counted) rather than waited for.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{command, eventually, free_port, wait_ready, NodeProcess as Node};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A PUT whose body is held back until [`SlowPut::finish`]: a request that genuinely
/// takes as long as the caller waits, measured by the node from its first byte.
struct SlowPut {
    stream: TcpStream,
    body: &'static [u8],
}

impl SlowPut {
    async fn start(addr: &str, key: &str) -> SlowPut {
        let body: &[u8] = b"{\"value\": \"slow\"}";
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "PUT /kv/{key} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             traceparent: 00-{TRACE_ID}-00f067aa0ba902b7-01\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body[..3]).await.unwrap();
        SlowPut { stream, body }
    }

    /// Sends the rest of the body and returns the response's status line.
    async fn finish(mut self) -> String {
        self.stream.write_all(&self.body[3..]).await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            self.stream.read_to_string(&mut response),
        )
        .await
        .expect("a response within 10 s")
        .unwrap();
        response.lines().next().unwrap_or_default().to_string()
    }
}

/// A node started without the harness's log capture, killed when the test ends, pass
/// or fail.
struct Spawned(std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lines_with(node: &Node, message: &str) -> Vec<Value> {
    node.log_lines()
        .into_iter()
        .filter(|l| l["message"] == message)
        .collect()
}

/// Per-request lines carry their fields once, at the top level.
fn assert_compact(line: &Value) {
    for key in ["method", "path", "route", "status", "latency_ms"] {
        assert!(!line[key].is_null(), "no {key}: {line}");
    }
    assert!(
        line.get("span").is_none() && line.get("spans").is_none(),
        "span fields repeated: {line}"
    );
}

#[tokio::test]
async fn ordinary_requests_log_nothing_by_default_and_a_slow_one_warns() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let node = Node::start(dir.path(), &[]);
    wait_ready(&node, &client).await;
    for i in 0..10 {
        let url = node.url(&format!("/kv/quiet-{i}"));
        let put = client.put(&url).json(&serde_json::json!({"value": "v"}));
        assert_eq!(put.send().await.unwrap().status(), 201);
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }

    // Held 300 ms, beyond the default threshold of 200 ms.
    let slow = SlowPut::start(&node.addr, "slow").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(slow.finish().await.starts_with("HTTP/1.1 201"));
    let line = eventually(Duration::from_secs(20), "the slow-request line", || async {
        lines_with(&node, "slow request")
            .into_iter()
            .find(|l| l["path"] == "/kv/slow")
    })
    .await;
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["target"], "kvstore::access", "{line}");
    assert_eq!(line["path"], "/kv/slow", "{line}");
    assert_eq!(line["route"], "put_key", "{line}");
    assert_eq!(line["status"], 201, "{line}");
    // Held 300 ms by the client; the server's clock starts when the headers arrive, a
    // little later, so only the threshold itself is certain.
    assert!(line["latency_ms"].as_f64().unwrap() >= 200.0, "{line}");
    assert_eq!(line["trace_id"], TRACE_ID, "{line}");
    assert_compact(&line);

    // Lines are written in order, so the earlier requests' lines would be there now.
    // On a busy machine one of them may really have been slow, and say so.
    for line in node.log_lines() {
        if line["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/kv/quiet-"))
        {
            assert_eq!(line["message"], "slow request", "{line}");
            assert!(line["latency_ms"].as_f64().unwrap() >= 200.0, "{line}");
        }
    }
    assert!(
        lines_with(&node, "request").is_empty(),
        "an ordinary request was logged"
    );
}

#[tokio::test]
async fn the_access_log_writes_one_compact_line_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    // The spelling of the variable; `KV_LOG_ACCESS_LOG` works too.
    let node = Node::start(dir.path(), &[("KV_LOGGING_ACCESS_LOG", "true")]);
    wait_ready(&node, &client).await;
    let url = |i: usize| node.url(&format!("/kv/acc-{i}"));
    let mut sent = Vec::new();
    for i in 0..4 {
        let put = client.put(url(i)).json(&serde_json::json!({"value": "v"}));
        sent.push(("PUT", i, put.send().await.unwrap().status().as_u16()));
        sent.push((
            "GET",
            i,
            client.get(url(i)).send().await.unwrap().status().as_u16(),
        ));
    }
    sent.push((
        "DELETE",
        0,
        client
            .delete(url(0))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
    ));
    sent.push((
        "GET",
        9,
        client.get(url(9)).send().await.unwrap().status().as_u16(),
    ));
    assert_eq!(sent.last().unwrap().2, 404);

    // A last request as a barrier: once its line is there, all earlier ones are.
    client.get(node.url("/kv/barrier")).send().await.unwrap();
    eventually(Duration::from_secs(20), "the barrier's line", || async {
        node.logged_containing("/kv/barrier").then_some(())
    })
    .await;
    let lines: Vec<Value> = lines_with(&node, "request")
        .into_iter()
        .filter(|l| {
            l["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/kv/acc-"))
        })
        .collect();
    let logged: Vec<(String, String, u64)> = lines
        .iter()
        .map(|l| {
            assert_eq!(l["level"], "INFO", "{l}");
            assert_compact(l);
            (
                l["method"].as_str().unwrap().to_string(),
                l["path"].as_str().unwrap().to_string(),
                l["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, String, u64)> = sent
        .iter()
        .map(|(m, i, s)| (m.to_string(), format!("/kv/acc-{i}"), u64::from(*s)))
        .collect();
    assert_eq!(logged, expected, "one line per request, in order");
}

/// Load shedding gives real 503s at once: one request holds the only slot while many
/// are refused. Their warn lines are capped per second, and a later line says how
/// many were left out.
#[tokio::test]
async fn server_errors_warn_at_a_limited_rate() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    // The held request must outlast the test, however slow the machine.
    let node = Node::start(
        dir.path(),
        &[
            ("KV_SERVER_MAX_IN_FLIGHT", "1"),
            ("KV_SERVER_REQUEST_TIMEOUT", "60s"),
        ],
    );
    wait_ready(&node, &client).await;
    let holder = SlowPut::start(&node.addr, "holder").await;
    // The held PUT must have its slot before the first probe: a probe that got there
    // first would see the PUT refused. Scraping /metrics counts itself too (it is not
    // bounded by the slot).
    eventually(Duration::from_secs(20), "the slot to be taken", || async {
        let metrics = crate::support::get_text(&client, &node.url("/metrics")).await?;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("kvstore_http_requests_in_flight "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|n| *n >= 2.0)
            .map(|_| ())
    })
    .await;
    let overloaded = || async {
        let resp = client.get(node.url("/kv/shed")).send().await.unwrap();
        resp.status() == 503
    };
    assert!(overloaded().await, "a request beyond the slot is refused");
    // A burst at once, so that more than a second's share of lines is due.
    let burst = futures::future::join_all((0..60).map(|_| overloaded())).await;
    assert!(burst.iter().all(|refused| *refused));
    let refused = std::cell::Cell::new(1 + burst.len());
    let errors = |node: &Node| {
        lines_with(node, "server error")
            .into_iter()
            .filter(|l| l["path"] == "/kv/shed")
            .collect::<Vec<_>>()
    };
    let first = eventually(Duration::from_secs(20), "a server-error line", || async {
        errors(&node).into_iter().next()
    })
    .await;
    assert_eq!(first["level"], "WARN", "{first}");
    assert_eq!(first["status"], 503, "{first}");
    assert_eq!(first["path"], "/kv/shed", "{first}");
    assert_compact(&first);
    // Polling a second and more later: a new window lets a line through, with the count
    // of those refused meanwhile.
    let later = eventually(
        Duration::from_secs(10),
        "a line counting the refused",
        || async {
            assert!(overloaded().await);
            refused.set(refused.get() + 1);
            errors(&node)
                .into_iter()
                .find(|l| l["suppressed"].as_u64().is_some_and(|n| n > 0))
        },
    )
    .await;
    let (logged, refused) = (errors(&node).len(), refused.get());
    assert!(
        logged < refused,
        "{logged} lines for {refused} refused requests: not rate-limited"
    );
    let suppressed: u64 = errors(&node)
        .iter()
        .filter_map(|l| l["suppressed"].as_u64())
        .sum();
    assert!(suppressed > 0, "{later}");
    assert!(holder.finish().await.starts_with("HTTP/1.1 201"));
}

#[tokio::test]
async fn openraft_logs_only_warnings_unless_asked() {
    let openraft_info = |node: &Node| {
        node.log_lines().into_iter().any(|l| {
            l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("openraft"))
                && (l["level"] == "INFO" || l["level"] == "DEBUG")
        })
    };
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    wait_ready(&node, &client).await;
    crate::support::put_ok(&client, &node.url("/kv/a"), "v").await;
    assert!(
        !openraft_info(&node),
        "openraft logged below warn by default"
    );
    drop(node);

    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[("KV_LOG_LEVEL", "info,openraft=info")]);
    wait_ready(&node, &client).await;
    eventually(Duration::from_secs(20), "openraft's info lines", || async {
        openraft_info(&node).then_some(())
    })
    .await;
}

/// logrotate moves the file and sends SIGHUP; the node goes on in a new file at the
/// configured path.
#[tokio::test]
async fn sighup_reopens_the_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("kv.log");
    let rotated = dir.path().join("kv.log.1");
    let port = free_port("127.0.0.1");
    let mut child = Spawned(
        command(
            &dir.path().join("data"),
            &[
                ("KV_LOG_FILE", log.to_str().unwrap()),
                ("KV_LOG_ACCESS_LOG", "true"),
                ("KV_SERVER_PORT", &port.to_string()),
            ],
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let file_has = |path: &std::path::Path, text: &str| {
        std::fs::read_to_string(path).is_ok_and(|t| t.contains(text))
    };
    eventually(Duration::from_secs(20), "the node to be ready", || async {
        let resp = client.get(format!("{base}/ready")).send().await.ok()?;
        (resp.status() == 200).then_some(())
    })
    .await;
    client
        .get(format!("{base}/kv/before"))
        .send()
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the first line", || async {
        file_has(&log, "/kv/before").then_some(())
    })
    .await;

    std::fs::rename(&log, &rotated).unwrap();
    crate::support::signal(child.0.id(), "HUP");
    // The node's own line about it is the first in the new file.
    eventually(Duration::from_secs(20), "a new log file", || async {
        file_has(&log, "reopened the log file").then_some(())
    })
    .await;
    client.get(format!("{base}/kv/after")).send().await.unwrap();
    eventually(
        Duration::from_secs(20),
        "a line in the new file",
        || async { file_has(&log, "/kv/after").then_some(()) },
    )
    .await;
    assert!(file_has(&rotated, "/kv/before"));
    assert!(!file_has(&rotated, "/kv/after"), "written to the old file");
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "SIGHUP ended the node"
    );
}

/// A stdout nobody reads blocks the log writer; requests go on, and the lines that do
/// not fit the queue are dropped and counted.
#[tokio::test]
async fn lines_the_writer_cannot_take_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port("127.0.0.1");
    let mut child = Spawned(
        command(
            dir.path(),
            &[
                ("KV_LOG_ACCESS_LOG", "true"),
                ("KV_LOG_BUFFER_LINES", "16"),
                ("KV_SERVER_PORT", &port.to_string()),
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let dropped = || async {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let help = text.contains("# HELP kvstore_log_lines_dropped_total ");
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix("kvstore_log_lines_dropped_total "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        Some((help, value?))
    };
    let (help, at_start) = eventually(Duration::from_secs(20), "/metrics", &dropped).await;
    assert!(help, "no HELP line");
    let started = Instant::now();
    let requests = std::cell::Cell::new(0);
    let count = eventually(Duration::from_secs(60), "dropped lines", || async {
        // Each request must be answered although its line cannot be written.
        for _ in 0..50 {
            let resp = client.get(format!("{base}/health")).send().await;
            assert!(resp.is_ok(), "a request waited for the log: {resp:?}");
            requests.set(requests.get() + 1);
        }
        let (_, n) = dropped().await?;
        (n > at_start).then_some(n)
    })
    .await;
    assert!(
        count > 0.0,
        "after {} requests in {:?}",
        requests.get(),
        started.elapsed()
    );
    // Unblock the writer before the node is killed, so it can exit.
    let mut rest = Vec::new();
    let _ = child.0.kill();
    let _ = child.0.stdout.take().unwrap().read_to_end(&mut rest);
}
