//! Forwarding of client writes from a follower to the leader, in batches.
//!
//! Every write a follower receives must reach the leader. Sending each in its own
//! request would cost the follower and the leader a whole HTTP exchange per write; a
//! busy follower instead queues its writes and sends what has queued up in one request,
//! with at most [`IN_FLIGHT`] such requests outstanding. Under light load a batch holds
//! one write and costs no extra wait; under heavy load batches grow on their own. The
//! leader proposes each write of a batch on its own and answers with one result per
//! write, in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ::metrics::counter;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::network::{CallError, PeerNetwork};
use super::node::{remaining, NodeError};
use super::rpc::{self, ForwardWrite, ForwardWriteResult};
use crate::store::{Command, CommandResult};
use crate::telemetry::{metrics, trace};

/// Batches on their way to the leader at once.
const IN_FLIGHT: usize = 4;
/// The most writes in one batch.
const MAX_BATCH: usize = 256;

/// A write waiting for its batch.
struct Queued {
    leader: u64,
    raft_url: String,
    write: ForwardWrite,
    deadline: Instant,
    reply: oneshot::Sender<ForwardWriteResult>,
}

/// The follower's end: queues writes for the leader. Cheap to clone.
#[derive(Clone)]
pub(crate) struct WriteForwarder {
    queue: mpsc::UnboundedSender<Queued>,
}

impl WriteForwarder {
    /// Starts the task that sends the batches. It ends when every handle is dropped.
    pub(crate) fn start(network: PeerNetwork) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(send_batches(network, queued));
        Self { queue }
    }

    /// Hands `command` to leader `leader` at `raft_url` and waits for its verdict, at
    /// most until `deadline`.
    #[tracing::instrument(name = "raft.forward", skip_all, fields(otel.kind = "client", leader))]
    pub(crate) async fn write(
        &self,
        leader: u64,
        raft_url: &str,
        command: Command,
        deadline: Instant,
    ) -> Result<CommandResult, NodeError> {
        counter!(metrics::FORWARDED, "kind" => "write").increment(1);
        let (reply, verdict) = oneshot::channel();
        let queued = Queued {
            leader,
            raft_url: raft_url.to_owned(),
            write: ForwardWrite {
                command,
                trace: trace::current_traceparent(),
            },
            deadline,
            reply,
        };
        if self.queue.send(queued).is_err() {
            // Nothing was sent: the write had no effect.
            return Err(NodeError::LeaderUnreachable { leader });
        }
        match tokio::time::timeout(remaining(deadline), verdict).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::OutcomeUnknown(
                "the forwarding task stopped".into(),
            )),
            Err(_) => Err(NodeError::OutcomeUnknown(format!(
                "forwarded to leader {leader}, no answer in time"
            ))),
        }
    }
}

/// Takes what has queued up whenever a slot is free and sends it, one request per
/// leader address.
async fn send_batches(network: PeerNetwork, mut queued: mpsc::UnboundedReceiver<Queued>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = queued.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // While every slot was busy, more writes may have queued up: take them too.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queued.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let mut by_leader: HashMap<(u64, String), Vec<Queued>> = HashMap::new();
        for q in batch {
            by_leader
                .entry((q.leader, q.raft_url.clone()))
                .or_default()
                .push(q);
        }
        let network = network.clone();
        tokio::spawn(async move {
            let sends = by_leader
                .into_iter()
                .map(|((leader, url), writes)| send(&network, leader, url, writes));
            futures::future::join_all(sends).await;
            drop(slot);
        });
    }
}

/// Sends one batch and hands each write its result.
async fn send(network: &PeerNetwork, leader: u64, raft_url: String, batch: Vec<Queued>) {
    let latest = batch
        .iter()
        .map(|q| q.deadline)
        .max()
        .unwrap_or_else(Instant::now);
    let (writes, replies): (Vec<ForwardWrite>, Vec<_>) =
        batch.into_iter().map(|q| (q.write, q.reply)).unzip();
    let answer = network
        .call::<_, Vec<ForwardWriteResult>>(
            &raft_url,
            leader,
            rpc::FORWARD_WRITES,
            &writes,
            remaining(latest),
        )
        .await;
    match answer {
        Ok(results) if results.len() == writes.len() => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Ok(results) => fail_all(
            replies,
            NodeError::OutcomeUnknown(format!(
                "leader {leader} answered {} results for {} writes",
                results.len(),
                writes.len()
            )),
        ),
        Err(CallError::Unreachable(_)) => {
            fail_all(replies, NodeError::LeaderUnreachable { leader })
        }
        Err(CallError::NoAnswer(e)) => fail_all(
            replies,
            NodeError::OutcomeUnknown(format!("forwarded to leader {leader}, no answer: {e}")),
        ),
    }
}

fn fail_all(replies: Vec<oneshot::Sender<ForwardWriteResult>>, error: NodeError) {
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}
