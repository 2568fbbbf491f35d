//! The client side of node-to-node traffic: Raft RPC to peers, and forwarding of client
//! requests to the leader. One pooled HTTP client with keep-alive serves every peer.
//!
//! A peer that cannot be connected to is reported `Unreachable`, so openraft backs off
//! instead of retrying in a tight loop. AppendEntries travel on a long-lived stream per
//! peer (see [`rpc::STREAM`]), or as plain requests to a peer that declines it.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{stream, SinkExt, StreamExt};
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
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::rpc::{self, SnapshotHeader};
use super::typ::{Snapshot, Vote};
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
        })
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

    /// POSTs `body` as JSON to `base_url + path` and decodes the JSON answer.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        base_url: &str,
        target: u64,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let resp = self
            .post(format!("{base_url}{path}"), target, timeout)
            .json(body)
            .send()
            .await
            .map_err(classify)?;
        decode(resp).await
    }
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
            stream: tokio::sync::Mutex::new(None),
            no_stream_until: None,
        }
    }
}

/// Why the replication stream could not be opened.
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
    /// The replication stream to the peer (see [`rpc::STREAM`]), once opened.
    /// (A lock only because openraft wants the client `Sync`; calls take `&mut self`.)
    stream: tokio::sync::Mutex<Option<Framed<reqwest::Upgraded, LengthDelimitedCodec>>>,
    /// After the peer declined the stream (a version without it), AppendEntries go as
    /// plain requests until then.
    no_stream_until: Option<Instant>,
}

/// How long replication keeps to plain requests after a peer declined the stream.
const STREAM_RETRY: Duration = Duration::from_secs(10);

impl PeerClient {
    /// Opens the replication stream.
    async fn open_stream(
        &self,
    ) -> Result<Framed<reqwest::Upgraded, LengthDelimitedCodec>, OpenStream> {
        let resp = self
            .net
            .request(
                reqwest::Method::GET,
                format!("{}{}", self.raft_url, rpc::STREAM),
                self.target,
            )
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, rpc::STREAM_PROTOCOL)
            .send()
            .await
            .map_err(|e| OpenStream::Failed(classify(e)))?;
        if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            // Reported as for any other request: a node that does not know the route, a
            // wrong secret, another node at this address.
            return Err(match decode::<serde_json::Value>(resp).await {
                Err(e) => OpenStream::Declined(e),
                Ok(_) => OpenStream::Declined(CallError::NoAnswer("no upgrade".into())),
            });
        }
        let io = resp
            .upgrade()
            .await
            .map_err(|e| OpenStream::Failed(CallError::NoAnswer(e.to_string())))?;
        Ok(Framed::new(io, rpc::stream_codec()))
    }

    /// Sends AppendEntries on the replication stream, opening it first if needed.
    /// `None`: the peer does not take the stream; send a plain request instead.
    async fn append_on_stream(
        &mut self,
        req: &AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
    ) -> Option<Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>>> {
        let deadline = tokio::time::Instant::now() + ttl;
        let stream = self.stream.get_mut();
        if stream.is_none() {
            if self.no_stream_until.is_some_and(|t| Instant::now() < t) {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.open_stream()).await {
                Ok(Ok(opened)) => *self.stream.get_mut() = Some(opened),
                Ok(Err(OpenStream::Failed(e))) => return Some(Err(self.rpc_error(e))),
                Ok(Err(OpenStream::Declined(e))) => {
                    tracing::debug!(target = self.target, error = %e, "replication stream declined");
                    self.no_stream_until = Some(Instant::now() + STREAM_RETRY);
                    return None;
                }
                Err(_) => {
                    return Some(Err(self.rpc_error(CallError::NoAnswer(
                        "timed out opening the replication stream".into(),
                    ))))
                }
            }
        }
        let stream = self.stream.get_mut().as_mut()?;
        let exchange = async {
            let body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
            stream
                .send(bytes::Bytes::from(body))
                .await
                .map_err(|e| e.to_string())?;
            let frame = stream
                .next()
                .await
                .ok_or_else(|| "the peer closed the replication stream".to_string())?
                .map_err(|e| e.to_string())?;
            serde_json::from_slice::<Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>>>(&frame)
                .map_err(|e| e.to_string())
        };
        let answer = match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                *self.stream.get_mut() = None;
                return Some(Err(self.rpc_error(CallError::NoAnswer(e))));
            }
            Err(_) => {
                // An answer may still come: this stream is out of step for good.
                *self.stream.get_mut() = None;
                return Some(Err(self.rpc_error(CallError::NoAnswer(
                    "timed out on the replication stream".into(),
                ))));
            }
        };
        Some(answer.map_err(|e| RPCError::Unreachable(Unreachable::from_string(e.to_string()))))
    }

    async fn rpc<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let answer: Result<Resp, RaftError<TypeConfig>> = self
            .net
            .call(&self.raft_url, self.target, path, req, option.hard_ttl())
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

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.append_on_stream(&rpc, option.hard_ttl()).await {
            Some(answer) => answer,
            None => self.rpc(rpc::APPEND, &rpc, &option).await,
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(rpc::VOTE, &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(rpc::PRE_VOTE, &rpc, &option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(rpc::TRANSFER_LEADER, &req, &option).await
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
    use poem::web::Json;
    use poem::{handler, post, Route, Server};

    use super::*;

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
            assert!(client.stream.get_mut().is_none());
            assert!(
                client.no_stream_until.is_some(),
                "declined: not asked again"
            );
        }
    }
}
