//! The server side of node-to-node traffic, on its own listener: Raft RPC, snapshot
//! streaming, and the leader's end of forwarded client requests. Mirrors `network.rs`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::error::RaftError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use poem::web::{Data, Json};
use poem::{
    get, handler, post, Body, Endpoint, EndpointExt, IntoResponse, Request, Response, Route,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::sync::Semaphore;

use super::rpc::{
    self, AdminOp, AdminResult, ForwardWrite, ForwardWriteResult, ReadIndexResult, SnapshotHeader,
};
use super::typ::Snapshot;
use super::{RaftNode, TypeConfig};
use crate::background::Background;
use crate::error::{ApiError, InvalidJsonDetails};
use crate::secret::secret_matches;
use crate::telemetry::trace;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

type RpcResult<T> = Result<T, RaftError<TypeConfig>>;

/// The longest snapshot header line accepted (vote plus membership).
const MAX_SNAPSHOT_HEADER: u64 = 1024 * 1024;

/// The Raft RPC application. With a non-empty `secret`, every request must carry it in
/// the `x-kvstore-secret` header, or is refused with 401.
/// The replication streams it serves run as tasks of `streams`, stopped at shutdown.
pub fn rpc_app(
    node: RaftNode,
    secret: String,
    incoming_dir: PathBuf,
    streams: Background,
) -> impl Endpoint<Output = Response> {
    let node_id = node.id();
    let secret: Arc<str> = Arc::from(secret);
    Route::new()
        .at(rpc::APPEND, post(append))
        .at(rpc::VOTE, post(vote))
        .at(rpc::PRE_VOTE, post(pre_vote))
        .at(rpc::SNAPSHOT, post(snapshot))
        .at(rpc::TRANSFER_LEADER, post(transfer_leader))
        .at(rpc::STREAM, get(stream))
        .at(rpc::FORWARD_WRITES, post(forward_writes))
        .at(rpc::READ_INDEX, post(read_index))
        .at(rpc::FORWARD_ADMIN, post(forward_admin))
        .data(node)
        .data(IncomingDir(incoming_dir))
        .data(StreamSlots(Arc::new(Semaphore::new(rpc::MAX_STREAMS))))
        .data(streams)
        .around(move |ep, req| peer_request(ep, req, node_id, secret.clone()))
}

/// The layer around every route of the Raft listener, before routing: the cluster
/// secret ([`check_secret`]), the node a request is meant for, a span for requests that
/// are part of a trace, and the JSON shape for every error.
async fn peer_request<E: Endpoint>(
    ep: Arc<E>,
    req: Request,
    node_id: u64,
    secret: Arc<str>,
) -> poem::Result<Response> {
    if let Err(refused) = check_secret(&req, &secret) {
        return Ok(refused.into_response());
    }
    // A membership that names this address for another id (a mistake, or a node
    // replaced without its id) must not make Raft talk to itself.
    let misdirected = req
        .header(rpc::TARGET_HEADER)
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|target| *target != node_id);
    if let Some(target) = misdirected {
        return Ok(Response::builder()
            .status(poem::http::StatusCode::MISDIRECTED_REQUEST)
            .body(format!("this is node {node_id}, not node {target}")));
    }
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let path = uri.path();
    // Only requests that are part of a trace (forwarded client requests) get a span;
    // heartbeats and replication would bury them.
    let span = if trace::has_traceparent(req.headers()) {
        let span = tracing::info_span!(
            "raft rpc",
            otel.name = %path,
            otel.kind = "server",
            url.path = %path,
            node.id = node_id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        let _ = span.set_parent(trace::extract(req.headers()));
        trace::record_ids(&span);
        span
    } else {
        tracing::Span::none()
    };
    Ok(match ep.call(req).instrument(span).await {
        Ok(resp) => resp.into_response(),
        Err(err) => crate::error::to_json_response(err, method.as_str(), path),
    })
}

/// With a non-empty cluster secret, a peer's request must carry it in the
/// `x-kvstore-secret` header; checked before routing, so unknown paths too are refused.
fn check_secret(req: &Request, secret: &str) -> Result<(), ApiError> {
    let given = req.header(rpc::SECRET_HEADER);
    if secret.is_empty() || given.is_some_and(|given| secret_matches(given, secret)) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "missing or wrong cluster secret".into(),
        ))
    }
}

/// The streams this node may still serve (see [`rpc::MAX_STREAMS`]).
#[derive(Clone)]
struct StreamSlots(Arc<Semaphore>);

/// Where received snapshots are spooled before they are installed.
#[derive(Clone)]
struct IncomingDir(PathBuf);

#[handler]
async fn append(
    node: Data<&RaftNode>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<RpcResult<AppendEntriesResponse<TypeConfig>>> {
    Json(node.append_entries(req).await)
}

#[handler]
async fn vote(
    node: Data<&RaftNode>,
    Json(req): Json<VoteRequest<TypeConfig>>,
) -> Json<RpcResult<VoteResponse<TypeConfig>>> {
    Json(node.raft().vote(req).await)
}

#[handler]
async fn pre_vote(
    node: Data<&RaftNode>,
    Json(req): Json<VoteRequest<TypeConfig>>,
) -> Json<RpcResult<VoteResponse<TypeConfig>>> {
    Json(node.raft().pre_vote(req).await)
}

#[handler]
async fn transfer_leader(
    node: Data<&RaftNode>,
    Json(req): Json<TransferLeaderRequest<TypeConfig>>,
) -> Json<RpcResult<TransferLeaderResponse<TypeConfig>>> {
    Json(
        node.raft()
            .handle_transfer_leader(req)
            .await
            .map_err(RaftError::Fatal),
    )
}

/// Upgrades the connection to a stream of calls (see [`rpc::STREAM`]) and serves it
/// until the peer closes it.
#[handler]
fn stream(
    req: &Request,
    node: Data<&RaftNode>,
    slots: Data<&StreamSlots>,
    background: Data<&Background>,
) -> Response {
    let wanted = req
        .header(poem::http::header::UPGRADE)
        .is_some_and(|p| p.eq_ignore_ascii_case(rpc::STREAM_PROTOCOL));
    let upgrade = match req.take_upgrade() {
        Ok(upgrade) if wanted => upgrade,
        _ => {
            return ApiError::InvalidParameter(format!(
                "expected an upgrade to {}",
                rpc::STREAM_PROTOCOL
            ))
            .into_response()
        }
    };
    // A node whose streams are being stopped takes no new ones: its peers send plain
    // requests until it is gone.
    if background.is_stopping() {
        return ApiError::Unavailable("this node is shutting down".into()).into_response();
    }
    let Ok(slot) = slots.0 .0.clone().try_acquire_owned() else {
        return ApiError::Overloaded(format!(
            "{} streams are open; send plain requests",
            rpc::MAX_STREAMS
        ))
        .into_response();
    };
    let node = node.clone();
    background.spawn(|stop| async move {
        let _slot = slot;
        let served = stop.run_until_cancelled(async {
            let Ok(io) = upgrade.await else { return };
            if let Err(error) = serve_stream(&node, io).await {
                tracing::debug!(error = format!("{error:#}"), "replication stream ended");
            }
        });
        if served.await.is_none() {
            tracing::debug!("replication stream closed: shutting down");
        }
    });
    Response::builder()
        .status(poem::http::StatusCode::SWITCHING_PROTOCOLS)
        .header(poem::http::header::CONNECTION, "upgrade")
        .header(poem::http::header::UPGRADE, rpc::STREAM_PROTOCOL)
        .finish()
}

async fn serve_stream(
    node: &RaftNode,
    io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
) -> anyhow::Result<()> {
    use futures::{SinkExt, StreamExt};
    let mut frames = tokio_util::codec::Framed::new(io, rpc::stream_codec());
    loop {
        let frame = match tokio::time::timeout(rpc::STREAM_IDLE, frames.next()).await {
            Ok(Some(frame)) => frame?,
            Ok(None) => return Ok(()),
            Err(_) => anyhow::bail!("idle for {:?}", rpc::STREAM_IDLE),
        };
        let (&kind, body) = frame
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("an empty frame"))?;
        let answer = match kind {
            rpc::KIND_APPEND => {
                let req: AppendEntriesRequest<TypeConfig> =
                    crate::cpu::heavy(body.len(), || serde_json::from_slice(body))?;
                let result: RpcResult<AppendEntriesResponse<TypeConfig>> =
                    node.append_entries(req).await;
                serde_json::to_vec(&result)?
            }
            rpc::KIND_FORWARD_WRITES => {
                let writes = crate::cpu::heavy(body.len(), || serde_json::from_slice(body))?;
                serde_json::to_vec(&forward_writes_here(node, writes).await)?
            }
            rpc::KIND_READ_INDEX => serde_json::to_vec(&node.read_index_here().await)?,
            _ => anyhow::bail!("unknown call {kind}"),
        };
        frames.send(bytes::Bytes::from(answer)).await?;
    }
}

/// Receives a streamed snapshot into a file, then installs it.
#[handler]
async fn snapshot(
    node: Data<&RaftNode>,
    dir: Data<&IncomingDir>,
    body: Body,
) -> poem::Result<Json<RpcResult<SnapshotResponse<TypeConfig>>>> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut reader = tokio::io::BufReader::new(body.into_async_read());
    let mut line = Vec::new();
    (&mut reader)
        .take(MAX_SNAPSHOT_HEADER)
        .read_until(b'\n', &mut line)
        .await
        .map_err(bad_request)?;
    let header: SnapshotHeader = serde_json::from_slice(&line).map_err(bad_request)?;

    tokio::fs::create_dir_all(&dir.0 .0)
        .await
        .map_err(internal)?;
    let path = dir.0 .0.join(format!(
        "incoming-{}.snap",
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let received = async {
        let mut file = tokio::fs::File::create(&path).await?;
        tokio::io::copy(&mut reader, &mut file).await?;
        file.sync_all().await?;
        std::fs::File::open(&path)
    }
    .await;
    let file = match received {
        Ok(file) => file,
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(bad_request(e));
        }
    };
    let snapshot = Snapshot {
        meta: header.meta,
        snapshot: file,
    };
    let result = node
        .raft()
        .install_full_snapshot(header.vote, snapshot)
        .await;
    let _ = tokio::fs::remove_file(&path).await;
    Ok(Json(result.map_err(RaftError::Fatal)))
}

#[handler]
async fn forward_writes(
    node: Data<&RaftNode>,
    Json(writes): Json<Vec<ForwardWrite>>,
) -> Json<Vec<ForwardWriteResult>> {
    Json(forward_writes_here(&node, writes).await)
}

/// Proposes a follower's batch of writes, one result per write, in order.
async fn forward_writes_here(
    node: &RaftNode,
    writes: Vec<ForwardWrite>,
) -> Vec<ForwardWriteResult> {
    // Each write is proposed on its own (Raft batches them again), under a span that
    // continues the follower's trace of that write.
    let proposals = writes.into_iter().map(|write| {
        let span = match &write.trace {
            Some(parent) => {
                let span = tracing::info_span!(
                    "raft.forwarded_write",
                    otel.kind = "server",
                    node.id = node.id(),
                    trace_id = tracing::field::Empty,
                    span_id = tracing::field::Empty,
                );
                trace::set_parent_from_traceparent(&span, parent);
                trace::record_ids(&span);
                span
            }
            None => tracing::Span::none(),
        };
        node.write_here(write.command).instrument(span)
    });
    futures::future::join_all(proposals).await
}

#[handler]
async fn read_index(node: Data<&RaftNode>) -> Json<ReadIndexResult> {
    Json(node.read_index_here().await)
}

#[handler]
async fn forward_admin(node: Data<&RaftNode>, Json(op): Json<AdminOp>) -> Json<AdminResult> {
    Json(node.admin_here(op).await)
}

fn bad_request(e: impl std::fmt::Display) -> poem::Error {
    let details = InvalidJsonDetails::new(format!("bad snapshot stream: {e}"), b"");
    ApiError::InvalidJson(details).into()
}

fn internal(e: impl std::fmt::Display) -> poem::Error {
    ApiError::Internal(e.to_string()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(secret: Option<&str>) -> Request {
        let mut builder = Request::builder();
        if let Some(secret) = secret {
            builder = builder.header(rpc::SECRET_HEADER, secret);
        }
        builder.finish()
    }

    #[test]
    fn peers_need_the_cluster_secret_when_one_is_set() {
        assert!(check_secret(&request(None), "").is_ok());
        assert!(check_secret(&request(Some("anything")), "").is_ok());
        assert!(check_secret(&request(Some("s3cret")), "s3cret").is_ok());
        for given in [None, Some(""), Some("s3cre"), Some("s3cret+")] {
            let e = check_secret(&request(given), "s3cret").unwrap_err();
            assert_eq!(e.status(), 401, "{given:?}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
    }
}
