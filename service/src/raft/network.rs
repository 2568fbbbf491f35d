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

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{stream, FutureExt, SinkExt, StreamExt};
use openraft::error::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::Framed;

use super::pre_vote::PreVoteRounds;
use super::rpc::{self, SnapshotHeader};
use super::typ::{Entry, LogId, Snapshot, Vote};
use super::{NodeAddr, TypeConfig};
use crate::store::SnapshotFile;

/// Why a call to a peer produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The connection could not be opened: the request was never delivered.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The request may have been delivered, but no usable answer came back.
    #[error("no answer from peer: {0}")]
    NoAnswer(String),
}

/// The shared HTTP client for all peers. Cheap to clone.
#[derive(Clone)]
pub struct PeerNetwork {
    http: reqwest::Client,
    secret: Option<Arc<str>>,
    streams: Arc<Streams>,
    /// This node's Pre-Vote rounds, counted as their requests leave.
    pre_votes: Arc<PreVoteRounds>,
}

/// Idle streams by peer (Raft URL and node id) with when each became idle, and the
/// peers that declined one.
#[derive(Default)]
struct Streams {
    idle: Mutex<HashMap<(String, u64), Vec<IdleStream>>>,
    declined: Mutex<HashMap<(String, u64), Instant>>,
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
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
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

    /// One call on a stream to the peer; `frame` is the kind of call and the body.
    /// `None`: the peer takes no streams; send a plain request instead.
    async fn call_on_stream<Resp: DeserializeOwned>(
        &self,
        base_url: &str,
        target: u64,
        frame: bytes::Bytes,
        timeout: Duration,
    ) -> Option<Result<Resp, CallError>> {
        let key = (base_url.to_string(), target);
        if lock(&self.streams.declined)
            .get(&key)
            .is_some_and(|until| Instant::now() < *until)
        {
            return None;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut stream = match self.idle_stream(&key) {
            Some(stream) => stream,
            None => {
                match tokio::time::timeout_at(deadline, self.open_stream(base_url, target)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(OpenStream::Failed(e))) => return Some(Err(e)),
                    Ok(Err(OpenStream::Declined(e))) => {
                        tracing::debug!(target, error = %e, "stream declined: plain requests");
                        lock(&self.streams.declined).insert(key, Instant::now() + STREAM_RETRY);
                        return None;
                    }
                    // Nothing was sent yet.
                    Err(_) => {
                        return Some(Err(CallError::Unreachable(
                            "timed out opening a stream".into(),
                        )))
                    }
                }
            }
        };
        let exchange = async {
            // A frame that could not be written whole is never acted on.
            stream
                .send(frame)
                .await
                .map_err(|e| CallError::Unreachable(e.to_string()))?;
            match stream.next().await {
                Some(Ok(answer)) => Ok(answer),
                Some(Err(e)) => Err(CallError::NoAnswer(e.to_string())),
                None => Err(CallError::NoAnswer("the peer closed the stream".into())),
            }
        };
        let answer = match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(answer)) => answer,
            // The stream is dropped: after a timeout, an answer may still come.
            Ok(Err(e)) => return Some(Err(e)),
            Err(_) => return Some(Err(CallError::NoAnswer("timed out on a stream".into()))),
        };
        let mut idle = lock(&self.streams.idle);
        let streams = idle.entry(key).or_default();
        if streams.len() < MAX_IDLE_STREAMS {
            streams.push((stream, Instant::now()));
        }
        drop(idle);
        Some(serde_json::from_slice(&answer).map_err(|e| CallError::NoAnswer(e.to_string())))
    }

    /// An idle stream to the peer that is still open. One the peer has closed (it
    /// restarted, say) shows its end at once and is dropped; one idle for long is
    /// dropped too, before the peer closes it (after [`rpc::STREAM_IDLE`]) just as a
    /// call goes out on it.
    fn idle_stream(&self, key: &(String, u64)) -> Option<CallStream> {
        let mut idle = lock(&self.streams.idle);
        let streams = idle.get_mut(key)?;
        while let Some((mut stream, since)) = streams.pop() {
            if since.elapsed() > rpc::STREAM_IDLE / 2 {
                continue;
            }
            // Nothing arrives unasked: anything ready is an end or an error.
            if stream.next().now_or_never().is_none() {
                return Some(stream);
            }
        }
        None
    }

    /// Opens a stream to the peer.
    async fn open_stream(&self, base_url: &str, target: u64) -> Result<CallStream, OpenStream> {
        let resp = self
            .request(
                reqwest::Method::GET,
                format!("{base_url}{}", rpc::STREAM),
                target,
            )
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, rpc::STREAM_PROTOCOL)
            .send()
            .await
            .map_err(|e| OpenStream::Failed(classify(e)))?;
        if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            // As for any other request: a node that does not know the route, a wrong
            // secret, another node at this address.
            // The plain request that follows gets the same answer and reports it.
            return Err(match decode::<serde_json::Value>(resp).await {
                Err(e) => OpenStream::Declined(e),
                Ok(_) => OpenStream::Declined(CallError::NoAnswer("no upgrade".into())),
            });
        }
        let io = resp
            .upgrade()
            .await
            .map_err(|e| OpenStream::Failed(CallError::Unreachable(e.to_string())))?;
        Ok(Framed::new(io, rpc::stream_codec()))
    }
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
        return Err(CallError::Unreachable(text));
    }
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(CallError::NoAnswer(format!("HTTP {status}: {text}")));
    }
    resp.json()
        .await
        .map_err(|e| CallError::NoAnswer(e.to_string()))
}

fn classify(e: reqwest::Error) -> CallError {
    if e.is_connect() {
        CallError::Unreachable(e.to_string())
    } else {
        CallError::NoAnswer(e.to_string())
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

/// Why a stream could not be opened.
enum OpenStream {
    /// The peer answered, but without the upgrade: fall back to plain requests.
    Declined(CallError),
    /// No answer, as for any request.
    Failed(CallError),
}

/// Raft RPC to one peer.
pub struct PeerClient {
    net: PeerNetwork,
    target: u64,
    raft_url: String,
}

/// How long a Pre-Vote round lasts, unless [`PeerNetwork::with_pre_vote_round_time`]
/// says otherwise: the longest election timeout of the default settings.
const DEFAULT_ROUND_TIME: Duration = Duration::from_secs(2);

/// How long calls to a peer go as plain requests after it declined a stream.
const STREAM_RETRY: Duration = Duration::from_secs(10);
/// Idle streams kept per peer.
const MAX_IDLE_STREAMS: usize = 8;

type CallStream = Framed<reqwest::Upgraded, rpc::Frames>;
/// A pooled stream and when it became idle.
type IdleStream = (CallStream, Instant);

/// The least time an AppendEntries call gets, however small: what a follower needs to
/// write a few entries durably on a busy machine. Heartbeats have their own, shorter
/// bound in openraft.
const MIN_APPEND_TIMEOUT: Duration = Duration::from_millis(500);

/// The slowest transfer a healthy peer is assumed to manage, receiving, decoding and
/// writing durably: a call's timeout grows by the time its message takes at this rate.
const MIN_PEER_BYTES_PER_SEC: f64 = 4.0 * 1024.0 * 1024.0;

/// The timeout of a call whose message is `bytes` long, given `base` for a small one.
fn for_payload(base: Duration, bytes: usize) -> Duration {
    base + Duration::from_secs_f64(bytes as f64 / MIN_PEER_BYTES_PER_SEC)
}

/// Splits `entries` into consecutive runs of at most [`rpc::MAX_MESSAGE_BYTES`] (by
/// [`rpc::entry_bytes`]), each holding at least one entry; no entries make one empty
/// run (a heartbeat, or a probe).
fn split_by_bytes(entries: Vec<Entry>) -> Vec<Vec<Entry>> {
    let mut runs: Vec<Vec<Entry>> = vec![Vec::new()];
    let mut bytes = 0usize;
    for entry in entries {
        let size = rpc::entry_bytes(&entry);
        let run = runs.last_mut().expect("never empty");
        if !run.is_empty() && bytes + size > rpc::MAX_MESSAGE_BYTES {
            runs.push(vec![entry]);
            bytes = size;
        } else {
            run.push(entry);
            bytes += size;
        }
    }
    runs
}

impl PeerClient {
    async fn rpc<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: (&Req, usize),
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let answer: Result<Resp, RaftError<TypeConfig>> = self
            .net
            .call(&self.raft_url, self.target, path, req, timeout)
            .await
            .map_err(|e| self.rpc_error(e))?;
        // The only error a peer returns here is that its Raft has stopped: back off.
        answer.map_err(|e| RPCError::Unreachable(Unreachable::from_string(e.to_string())))
    }

    fn rpc_error(&self, e: CallError) -> RPCError<TypeConfig> {
        match e {
            CallError::Unreachable(_) => RPCError::Unreachable(Unreachable::from_string(format!(
                "node {}: {e}",
                self.target
            ))),
            CallError::NoAnswer(_) => RPCError::Network(NetworkError::from_string(format!(
                "node {}: {e}",
                self.target
            ))),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotFile;

    /// Sends the entries as consecutive messages of bounded size (see
    /// [`split_by_bytes`]). When a later message fails, the follower has the earlier
    /// ones: that is reported as a partial success, and openraft sends the rest again.
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let AppendEntriesRequest {
            vote,
            prev_log_id,
            leader_commit,
            entries,
        } = rpc;
        let timeout = option.hard_ttl().max(MIN_APPEND_TIMEOUT);
        // The last entry the follower is known to hold, once a message succeeded.
        let mut appended: Option<Option<LogId>> = None;
        let mut prev_log_id = prev_log_id;
        for entries in split_by_bytes(entries) {
            let last = entries
                .last()
                .map(|e| Some(e.log_id))
                .unwrap_or(prev_log_id);
            let req = AppendEntriesRequest::<TypeConfig> {
                vote,
                prev_log_id,
                // Ahead of these entries for every message but the last; a follower
                // commits no further than the entries it holds.
                leader_commit,
                entries,
            };
            let data_bytes = req.entries.iter().map(rpc::entry_bytes).sum();
            let answer = self.rpc(rpc::APPEND, (&req, data_bytes), timeout).await;
            match (answer, appended) {
                (Ok(AppendEntriesResponse::Success), _) => {
                    appended = Some(last);
                    prev_log_id = last;
                }
                (answer, None) => return answer,
                (Ok(AppendEntriesResponse::HigherVote(v)), _) => {
                    return Ok(AppendEntriesResponse::HigherVote(v))
                }
                (_, Some(appended)) => return Ok(AppendEntriesResponse::PartialSuccess(appended)),
            }
        }
        Ok(AppendEntriesResponse::Success)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.net.pre_votes.vote_sent(rpc.vote.leader_id().term);
        self.rpc(rpc::VOTE, (&rpc, 0), option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.net
            .pre_votes
            .pre_vote_sent(self.target, rpc.vote.leader_id().term);
        self.rpc(rpc::PRE_VOTE, (&rpc, 0), option.hard_ttl()).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(rpc::TRANSFER_LEADER, (&req, 0), option.hard_ttl())
            .await
    }

    /// Streams the snapshot file after a one-line JSON header; the file is never read
    /// into memory whole.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = SnapshotHeader {
            vote,
            meta: snapshot.meta,
        };
        let mut line = serde_json::to_vec(&header)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        line.push(b'\n');
        let file = tokio::fs::File::from_std(snapshot.snapshot);
        let body = stream::once(async move { Ok(bytes::Bytes::from(line)) })
            .chain(tokio_util::io::ReaderStream::new(file));
        let send = async {
            let resp = self
                .net
                .post(
                    format!("{}{}", self.raft_url, rpc::SNAPSHOT),
                    self.target,
                    option.hard_ttl(),
                )
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
                .map_err(classify)?;
            decode::<Result<SnapshotResponse<TypeConfig>, RaftError<TypeConfig>>>(resp).await
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            answer = send => match answer {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(e)) => Err(StreamingError::Unreachable(Unreachable::from_string(e.to_string()))),
                Err(e) => Err(match self.rpc_error(e) {
                    RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                    RPCError::Network(n) => StreamingError::Network(n),
                    other => StreamingError::Network(NetworkError::from_string(other.to_string())),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::network::RPCOption;
    use poem::listener::{Acceptor, Listener};
    use poem::web::{Data, Json};
    use poem::{handler, post, EndpointExt, Route, Server};

    use super::*;
    use crate::store::test_entries::put;

    /// One AppendEntries as a recording peer saw it: the previous index and the
    /// entries' indexes.
    type Appended = (Option<u64>, Vec<u64>);

    /// What a recording peer saw, and how many AppendEntries it accepts before it
    /// stops answering.
    #[derive(Clone, Default)]
    struct Recorder {
        seen: Arc<Mutex<Vec<Appended>>>,
        accept: Option<usize>,
    }

    #[handler]
    async fn recording_append(
        recorder: Data<&Recorder>,
        Json(req): Json<AppendEntriesRequest<TypeConfig>>,
    ) -> poem::Result<Json<Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>>>> {
        let mut seen = lock(&recorder.seen);
        if recorder.accept.is_some_and(|n| seen.len() >= n) {
            return Err(poem::Error::from_status(
                poem::http::StatusCode::SERVICE_UNAVAILABLE,
            ));
        }
        seen.push((
            req.prev_log_id.map(|l| l.index),
            req.entries.iter().map(|e| e.log_id.index).collect(),
        ));
        Ok(Json(Ok(AppendEntriesResponse::Success)))
    }

    /// A peer (plain requests only) that records the AppendEntries it gets.
    async fn recording_peer(accept: Option<usize>) -> (PeerClient, Recorder) {
        let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .unwrap();
        let addr = acceptor.local_addr()[0].as_socket_addr().copied().unwrap();
        let recorder = Recorder {
            accept,
            ..Recorder::default()
        };
        let app = Route::new()
            .at(rpc::APPEND, post(recording_append))
            .data(recorder.clone());
        tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
        let mut net = PeerNetwork::new("", None, None).unwrap();
        let node = NodeAddr {
            api_addr: String::new(),
            raft_addr: format!("http://{addr}"),
        };
        (net.new_client(2, &node).await, recorder)
    }

    /// Ten entries of 1 MiB after entry 4, as openraft might hand them over.
    fn large_append() -> AppendEntriesRequest<TypeConfig> {
        let value = "v".repeat(1 << 20);
        let entries: Vec<Entry> = (5..15).map(|i| put(i, &format!("k{i}"), &value)).collect();
        AppendEntriesRequest {
            vote: openraft::impls::Vote::new_committed(1, 1),
            prev_log_id: Some(put(4, "k", "v").log_id),
            entries,
            leader_commit: None,
        }
    }

    #[tokio::test]
    async fn large_appends_go_as_consecutive_messages_of_bounded_size() {
        let (mut client, recorder) = recording_peer(None).await;
        let answer = client
            .append_entries(large_append(), RPCOption::new(Duration::from_millis(50)))
            .await
            .unwrap();
        assert_eq!(answer, AppendEntriesResponse::Success);
        let seen = lock(&recorder.seen).clone();
        // At most 4 MiB of data each: three entries of 1 MiB and a bit.
        assert_eq!(
            seen,
            vec![
                (Some(4), vec![5, 6, 7]),
                (Some(7), vec![8, 9, 10]),
                (Some(10), vec![11, 12, 13]),
                (Some(13), vec![14]),
            ]
        );
    }

    #[tokio::test]
    async fn a_failure_after_some_messages_reports_what_the_peer_holds() {
        let (mut client, recorder) = recording_peer(Some(2)).await;
        let answer = client
            .append_entries(large_append(), RPCOption::new(Duration::from_millis(50)))
            .await
            .unwrap();
        let held = put(10, "k", "v").log_id;
        assert_eq!(answer, AppendEntriesResponse::PartialSuccess(Some(held)));
        assert_eq!(lock(&recorder.seen).len(), 2);

        // Nothing delivered at all: an error, as for any call.
        let (mut client, _) = recording_peer(Some(0)).await;
        let answer = client
            .append_entries(large_append(), RPCOption::new(Duration::from_millis(50)))
            .await;
        assert!(answer.is_err(), "{answer:?}");
    }

    #[test]
    fn the_timeout_grows_with_the_message() {
        let base = Duration::from_millis(500);
        assert_eq!(for_payload(base, 0), base);
        assert_eq!(for_payload(base, 4 << 20), base + Duration::from_secs(1));
    }

    /// A peer from before the replication stream: it only knows plain AppendEntries.
    #[handler]
    fn plain_append(
        Json(_): Json<AppendEntriesRequest<TypeConfig>>,
    ) -> Json<Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>>> {
        Json(Ok(AppendEntriesResponse::Success))
    }

    #[tokio::test]
    async fn a_peer_without_the_stream_gets_plain_requests() {
        let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .unwrap();
        let addr = acceptor.local_addr()[0].as_socket_addr().copied().unwrap();
        let app = Route::new().at(rpc::APPEND, post(plain_append));
        tokio::spawn(Server::new_with_acceptor(acceptor).run(app));

        let mut net = PeerNetwork::new("", None, None).unwrap();
        let node = NodeAddr {
            api_addr: String::new(),
            raft_addr: format!("http://{addr}"),
        };
        let mut client = net.new_client(2, &node).await;
        for _ in 0..2 {
            let req = AppendEntriesRequest::<TypeConfig> {
                vote: openraft::impls::Vote::new_committed(1, 1),
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            };
            let answer = client
                .append_entries(req, RPCOption::new(Duration::from_secs(5)))
                .await
                .unwrap();
            assert_eq!(answer, AppendEntriesResponse::Success);
            let declined = lock(&net.streams.declined);
            assert!(
                declined.contains_key(&(format!("http://{addr}"), 2)),
                "declined: plain requests for a while"
            );
        }
    }
}
