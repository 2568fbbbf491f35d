//! openraft's side of the network: the RPCs to one peer, with AppendEntries split into
//! messages of bounded size.

use std::future::Future;
use std::time::Duration;

use futures::{stream, StreamExt};
use openraft::error::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{classify, decode, CallError, PeerNetwork};
use crate::raft::rpc::{self, SnapshotHeader};
use crate::raft::typ::{Entry, LogId, Snapshot, Vote};
use crate::raft::TypeConfig;
use crate::store::SnapshotFile;

/// A failed call to one peer, as openraft is told of it: which peer, and why (its
/// source, kept with the sources under it).
#[derive(Debug, thiserror::Error)]
#[error("node {target}: {error}")]
struct PeerCallError {
    target: u64,
    #[source]
    error: CallError,
}

/// Raft RPC to one peer.
pub struct PeerClient {
    pub(super) net: PeerNetwork,
    pub(super) target: u64,
    pub(super) raft_url: String,
}

/// The least time an AppendEntries call gets, however small: what a follower needs to
/// write a few entries durably on a busy machine. Heartbeats have their own, shorter
/// bound in openraft.
const MIN_APPEND_TIMEOUT: Duration = Duration::from_millis(500);

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
        answer.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    fn rpc_error(&self, error: CallError) -> RPCError<TypeConfig> {
        let unreachable = matches!(error, CallError::Unreachable(_));
        let e = PeerCallError {
            target: self.target,
            error,
        };
        if unreachable {
            RPCError::Unreachable(Unreachable::new(&e))
        } else {
            RPCError::Network(NetworkError::new(&e))
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
                Ok(Err(e)) => Err(StreamingError::Unreachable(Unreachable::new(&e))),
                Err(e) => Err(match self.rpc_error(e) {
                    RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                    RPCError::Network(n) => StreamingError::Network(n),
                    other => StreamingError::Network(NetworkError::new(&other)),
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

    use std::sync::{Arc, Mutex};

    use openraft::network::RaftNetworkFactory;

    use super::super::{for_payload, lock};
    use super::*;
    use crate::raft::NodeAddr;
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
