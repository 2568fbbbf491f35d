//! Long-lived streams of calls to peers (see [`rpc::STREAM`]): opened on first use,
//! pooled while idle, and given up on for a while by a peer that declines them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{FutureExt, SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use tokio_util::codec::Framed;

use super::{classify, decode, lock, CallError, PeerNetwork};
use crate::raft::rpc;

/// Idle streams by peer (Raft URL and node id) with when each became idle, and the
/// peers that declined one.
#[derive(Default)]
pub(super) struct Streams {
    pub(super) idle: Mutex<HashMap<(String, u64), Vec<IdleStream>>>,
    pub(super) declined: Mutex<HashMap<(String, u64), Instant>>,
}

/// How long calls to a peer go as plain requests after it declined a stream.
const STREAM_RETRY: Duration = Duration::from_secs(10);
/// Idle streams kept per peer.
const MAX_IDLE_STREAMS: usize = 8;

type CallStream = Framed<reqwest::Upgraded, rpc::Frames>;
/// A pooled stream and when it became idle.
type IdleStream = (CallStream, Instant);

/// Why a stream could not be opened.
enum OpenStream {
    /// The peer answered, but without the upgrade: fall back to plain requests.
    Declined(CallError),
    /// No answer, as for any request.
    Failed(CallError),
}

impl PeerNetwork {
    /// One call on a stream to the peer; `frame` is the kind of call and the body.
    /// `None`: the peer takes no streams; send a plain request instead.
    pub(super) async fn call_on_stream<Resp: DeserializeOwned>(
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
                .map_err(|e| CallError::Unreachable(e.into()))?;
            match stream.next().await {
                Some(Ok(answer)) => Ok(answer),
                Some(Err(e)) => Err(CallError::NoAnswer(e.into())),
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
        Some(serde_json::from_slice(&answer).map_err(|e| CallError::NoAnswer(e.into())))
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
            .map_err(|e| OpenStream::Failed(CallError::Unreachable(e.into())))?;
        Ok(Framed::new(io, rpc::stream_codec()))
    }
}
