//! The client side of node-to-node traffic: Raft RPC to peers, and forwarding of client
//! requests to the leader. One pooled HTTP client with keep-alive serves every peer.
//!
//! A peer that cannot be connected to is reported `Unreachable`, so openraft backs off
//! instead of retrying in a tight loop. AppendEntries travel on a long-lived stream per
//! peer (see [`rpc::STREAM`]), or as plain requests to a peer that declines it.
//!
//! Messages are bounded by bytes: openraft hands over up to `max_payload_entries`
//! entries, which may be bytes or a MiB each, and they go as several AppendEntries of
//! at most [`rpc::MAX_MESSAGE_BYTES`], one after another. Each call's timeout grows with
//! its size, so a large but healthy message is never timed out (and sent again, for
//! ever, as happened when 64 values of 1 MiB travelled as one message).
//!
//! `client.rs` is openraft's side (the RPCs to one peer); `stream.rs` keeps the
//! long-lived streams.

mod client;
mod stream;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::network::RaftNetworkFactory;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use self::client::PeerClient;
use self::stream::Streams;
use super::pre_vote::PreVoteRounds;
use super::rpc;
use super::{NodeAddr, TypeConfig};

/// Why a call to a peer produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The connection could not be opened: the request was never delivered.
    #[error("peer unreachable: {0}")]
    Unreachable(#[source] BoxError),
    /// The request may have been delivered, but no usable answer came back.
    #[error("no answer from peer: {0}")]
    NoAnswer(#[source] BoxError),
}

/// What went wrong under a [`CallError`]: the HTTP client's, the codec's or the JSON
/// parser's error, with its sources, or a sentence of ours.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The shared HTTP client for all peers. Cheap to clone.
#[derive(Clone)]
pub struct PeerNetwork {
    http: reqwest::Client,
    secret: Option<Arc<str>>,
    streams: Arc<Streams>,
    /// This node's Pre-Vote rounds, counted as their requests leave.
    pre_votes: Arc<PreVoteRounds>,
}

impl PeerNetwork {
    /// `secret` is sent on every request when not empty. `local_ip`, when given, is the
    /// source address of outgoing connections (the address the Raft listener binds).
    /// `tls`: the client side of TLS to peers (from [`crate::tls::client_config`]).
    pub fn new(
        secret: &str,
        local_ip: Option<IpAddr>,
        tls: Option<rustls::ClientConfig>,
    ) -> anyhow::Result<Self> {
        let mut http = reqwest::Client::builder();
        if let Some(tls) = tls {
            http = http.use_preconfigured_tls(tls).https_only(true);
        }
        let http = http
            .pool_idle_timeout(Duration::from_secs(60))
            // Forwarded client requests run many at once: keep their connections.
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .local_address(local_ip)
            .build()?;
        Ok(Self {
            http,
            secret: (!secret.is_empty()).then(|| Arc::from(secret)),
            streams: Arc::default(),
            pre_votes: PreVoteRounds::new(DEFAULT_ROUND_TIME),
        })
    }

    /// Counts a Pre-Vote round as over, without an election, after `round_time` (the
    /// maximum election timeout).
    pub fn with_pre_vote_round_time(mut self, round_time: Duration) -> Self {
        self.pre_votes = PreVoteRounds::new(round_time);
        self
    }

    /// A POST to node `target` carrying the secret, the target's id (a node refuses
    /// requests meant for another) and the current span's `traceparent`.
    fn post(&self, url: String, target: u64, timeout: Duration) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, url, target)
            .timeout(timeout)
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: String,
        target: u64,
    ) -> reqwest::RequestBuilder {
        let req = self
            .http
            .request(method, url)
            .header(rpc::TARGET_HEADER, target)
            .headers(crate::telemetry::trace::inject_current());
        match &self.secret {
            Some(secret) => req.header(rpc::SECRET_HEADER, secret.as_ref()),
            None => req,
        }
    }
    /// Calls `path` on node `target` with `body` and decodes the JSON answer: on a
    /// stream where the path takes one and the peer accepts it, else as a POST.
    /// `timeout` is for a small message; a larger one gets more (see [`for_payload`]).
    /// `data_bytes`: about how much client data `body` carries (0 for none), so that
    /// encoding a large one does not stall other tasks (see [`crate::cpu`]).
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        base_url: &str,
        target: u64,
        path: &str,
        (body, data_bytes): (&Req, usize),
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        // One byte in front for the kind of call on a stream; a POST skips it.
        let mut frame = vec![rpc::stream_kind(path).unwrap_or(0)];
        crate::cpu::heavy(data_bytes, || serde_json::to_writer(&mut frame, body))
            .map_err(|e| CallError::Unreachable(e.into()))?;
        let timeout = for_payload(timeout, frame.len());
        let frame = bytes::Bytes::from(frame);
        if rpc::stream_kind(path).is_some() {
            if let Some(answer) = self
                .call_on_stream(base_url, target, frame.clone(), timeout)
                .await
            {
                return answer;
            }
        }
        let resp = self
            .post(format!("{base_url}{path}"), target, timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(frame.slice(1..))
            .send()
            .await
            .map_err(classify)?;
        decode(resp).await
    }
}

/// How long a Pre-Vote round lasts, unless [`PeerNetwork::with_pre_vote_round_time`]
/// says otherwise: the longest election timeout of the default settings.
const DEFAULT_ROUND_TIME: Duration = Duration::from_secs(2);

/// The slowest transfer a healthy peer is assumed to manage, receiving, decoding and
/// writing durably: a call's timeout grows by the time its message takes at this rate.
const MIN_PEER_BYTES_PER_SEC: f64 = 4.0 * 1024.0 * 1024.0;

/// The timeout of a call whose message is `bytes` long, given `base` for a small one.
fn for_payload(base: Duration, bytes: usize) -> Duration {
    base + Duration::from_secs_f64(bytes as f64 / MIN_PEER_BYTES_PER_SEC)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

async fn decode<Resp: DeserializeOwned>(resp: reqwest::Response) -> Result<Resp, CallError> {
    let status = resp.status();
    if status == reqwest::StatusCode::MISDIRECTED_REQUEST
        || status == reqwest::StatusCode::NOT_FOUND
    {
        // Another node answers at that address, or a node without this route (an older
        // version, during a rolling upgrade): either way the request had no effect.
        let text = resp.text().await.unwrap_or_default();
        return Err(CallError::Unreachable(text.into()));
    }
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(CallError::NoAnswer(format!("HTTP {status}: {text}").into()));
    }
    resp.json().await.map_err(|e| CallError::NoAnswer(e.into()))
}

fn classify(e: reqwest::Error) -> CallError {
    if e.is_connect() {
        CallError::Unreachable(e.into())
    } else {
        CallError::NoAnswer(e.into())
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> Self::Network {
        PeerClient {
            net: self.clone(),
            target,
            raft_url: node.raft_addr.trim_end_matches('/').to_string(),
        }
    }
}
