//! The workload driver: concurrent clients, each with at most one request in flight,
//! sending put/get/delete to random nodes over a small key set, every value unique.
//! Every request becomes an [`Op`] in the history.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::history::{Kind, Op, Outcome};

/// The nodes' API base URLs (index 0 is node 1). The cluster harness updates them when
/// a restarted container comes back on another address.
#[derive(Clone, Default)]
pub struct Endpoints(Arc<RwLock<Vec<String>>>);

impl Endpoints {
    pub fn new(urls: Vec<String>) -> Self {
        Endpoints(Arc::new(RwLock::new(urls)))
    }

    pub fn get(&self, node: usize) -> String {
        self.0.read().expect("endpoints lock")[node].clone()
    }

    pub fn set(&self, node: usize, url: String) {
        self.0.write().expect("endpoints lock")[node] = url;
    }

    pub fn len(&self) -> usize {
        self.0.read().expect("endpoints lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub clients: u32,
    pub keys: u32,
    /// How long a client waits for an answer before recording the outcome unknown.
    pub request_timeout: Duration,
    /// Pause between a client's requests (keeps the history a checkable size).
    pub think_time: Duration,
    /// Read with `consistency=stale` (allowed to miss recent writes): only for
    /// showing that the checker catches what that mode permits.
    pub stale_reads: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            clients: 6,
            keys: 6,
            request_timeout: Duration::from_secs(3),
            think_time: Duration::from_millis(3),
            stale_reads: false,
        }
    }
}

/// A running workload; [`Workload::finish`] stops it and returns the history.
pub struct Workload {
    stop: tokio::sync::watch::Sender<bool>,
    clients: Vec<tokio::task::JoinHandle<Vec<Op>>>,
    final_reader: Client,
    start: Instant,
}

impl Workload {
    pub fn start(endpoints: Endpoints, config: Config) -> Workload {
        let start = Instant::now();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(Duration::from_millis(500))
            .build()
            .expect("HTTP client");
        let client = |id: u32| Client {
            id,
            http: http.clone(),
            endpoints: endpoints.clone(),
            config: config.clone(),
            start,
            rng: fastrand::Rng::with_seed(u64::from(id) + 1),
        };
        let clients = (0..config.clients)
            .map(|id| tokio::spawn(client(id).run(stopped.clone())))
            .collect();
        Workload {
            stop,
            clients,
            final_reader: client(config.clients),
            start,
        }
    }

    /// Time since the workload started, on the history's clock.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Stops sending new requests, waits for those in flight, then reads every key
    /// once from every node (so a write lost at the end cannot go unnoticed), and
    /// returns the history in invoke order.
    pub async fn finish(self) -> Vec<Op> {
        let _ = self.stop.send(true);
        let mut history = Vec::new();
        for client in self.clients {
            history.extend(client.await.expect("workload client panicked"));
        }
        let mut reader = self.final_reader;
        for node in 0..reader.endpoints.len() {
            for key in 0..reader.config.keys {
                let op = reader
                    .request(node, format!("key-{key}"), Kind::Get, None)
                    .await;
                history.push(op);
            }
        }
        history.sort_by_key(|op| (op.invoke_us, op.client));
        history
    }
}

struct Client {
    id: u32,
    http: reqwest::Client,
    endpoints: Endpoints,
    config: Config,
    start: Instant,
    rng: fastrand::Rng,
}

impl Client {
    async fn run(mut self, stopped: tokio::sync::watch::Receiver<bool>) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut seq = 0u64;
        while !*stopped.borrow() {
            let node = self.rng.usize(0..self.endpoints.len());
            let key = format!("key-{}", self.rng.u32(0..self.config.keys));
            let kind = match self.rng.u8(0..10) {
                0..=3 => Kind::Put,
                4 => Kind::Delete,
                _ => Kind::Get,
            };
            let value = (kind == Kind::Put).then(|| {
                seq += 1;
                format!("c{}-{seq}", self.id)
            });
            ops.push(self.request(node, key, kind, value).await);
            tokio::time::sleep(self.config.think_time).await;
        }
        ops
    }

    /// Sends one request to `node` (0-based) and records it.
    async fn request(&mut self, node: usize, key: String, kind: Kind, value: Option<String>) -> Op {
        let op = Op {
            client: self.id,
            node: node as u32 + 1,
            kind,
            key,
            value,
            found: None,
            expected: None,
            applied: None,
            revision: None,
            invoke_us: 0,
            return_us: 0,
            outcome: Outcome::Unknown,
            detail: None,
        };
        let base = self.endpoints.get(node);
        send(&self.http, &base, op, self.config.stale_reads, self.start).await
    }
}

/// Sends the request `op` describes to the node at `base` and returns it with its times
/// (on the clock that began at `start`), outcome and result filled in.
///
/// A compare-and-set is a `PUT` with `If-Match: "<revision>"`, or with
/// `If-None-Match: *` when it expects the key to be absent (`revision` is `None`).
pub async fn send(
    http: &reqwest::Client,
    base: &str,
    mut op: Op,
    stale_reads: bool,
    start: Instant,
) -> Op {
    let url = format!("{base}/kv/{}", op.key);
    let request = match op.kind {
        Kind::Put => http
            .put(&url)
            .json(&serde_json::json!({ "value": op.value })),
        Kind::Cas => {
            let put = http
                .put(&url)
                .json(&serde_json::json!({ "value": op.value }));
            match op.revision {
                Some(rev) => put.header("If-Match", format!("\"{rev}\"")),
                None => put.header("If-None-Match", "*"),
            }
        }
        Kind::Get if stale_reads => http.get(&url).query(&[("consistency", "stale")]),
        Kind::Get => http.get(&url),
        Kind::Delete => http.delete(&url),
    };
    op.invoke_us = start.elapsed().as_micros() as u64;
    let answer = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body: Option<Json> = response.json().await.ok();
            Ok((status, body))
        }
        Err(e) => Err(e),
    };
    op.return_us = start.elapsed().as_micros() as u64;
    classify(&mut op, answer);
    op
}

/// Sets the op's outcome and result from the HTTP answer.
///
/// Writes fail for certain only when the server says it refused them before proposing
/// (`NO_LEADER`, `STORAGE_UNAVAILABLE`, `OVERLOADED`), on a 4xx, or when no connection
/// could be opened; every other error is unknown. A read that did not answer is
/// unknown; one that answered with an error is a failure (neither says anything about
/// the data). A compare-and-set answered 412 `PRECONDITION_FAILED` is Ok, not applied.
pub fn classify(op: &mut Op, answer: Result<(u16, Option<Json>), reqwest::Error>) {
    let (status, body) = match answer {
        Ok(answer) => answer,
        Err(e) => {
            op.outcome = if e.is_connect() {
                Outcome::Fail
            } else {
                Outcome::Unknown
            };
            op.detail = Some(if e.is_connect() {
                "connect failed".into()
            } else if e.is_timeout() {
                "client timeout".into()
            } else {
                "connection lost".into()
            });
            return;
        }
    };
    let code = body
        .as_ref()
        .and_then(|b| b.get("code"))
        .and_then(Json::as_str)
        .map(str::to_string);
    match (op.kind, status, code.as_deref()) {
        (Kind::Put, 201, _) => op.outcome = Outcome::Ok,
        (Kind::Cas, 201, _) => {
            op.outcome = Outcome::Ok;
            op.applied = Some(true);
        }
        (Kind::Cas, 412, Some("PRECONDITION_FAILED")) => {
            op.outcome = Outcome::Ok;
            op.applied = Some(false);
        }
        (Kind::Get, 200, _) => {
            op.revision = body
                .as_ref()
                .and_then(|b| b.get("mod_revision"))
                .and_then(Json::as_u64);
            let value = body
                .as_ref()
                .and_then(|b| b.get("value"))
                .and_then(Json::as_str);
            match value {
                Some(v) => {
                    op.value = Some(v.to_string());
                    op.outcome = Outcome::Ok;
                }
                None => {
                    op.outcome = Outcome::Fail;
                    op.detail = Some("200 without a value".into());
                }
            }
        }
        (Kind::Get, 404, Some("KEY_NOT_FOUND")) => {
            op.value = None;
            op.outcome = Outcome::Ok;
        }
        (Kind::Delete, 200, _) => {
            op.found = Some(true);
            op.outcome = Outcome::Ok;
        }
        (Kind::Delete, 404, Some("KEY_NOT_FOUND")) => {
            op.found = Some(false);
            op.outcome = Outcome::Ok;
        }
        (kind, status, code) => {
            let definite = kind == Kind::Get
                || matches!(
                    code,
                    Some("NO_LEADER" | "STORAGE_UNAVAILABLE" | "OVERLOADED")
                );
            op.outcome = if definite || (400..500).contains(&status) {
                Outcome::Fail
            } else {
                Outcome::Unknown
            };
            op.detail = Some(match code {
                Some(code) => format!("{status} {code}"),
                None => status.to_string(),
            });
            if kind == Kind::Get {
                op.value = None;
            }
        }
    }
}
