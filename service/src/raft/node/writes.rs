//! Writes: proposed to Raft on the leader, or forwarded to it in batches by a follower.

use std::time::{Duration, Instant};

use ::metrics::counter;
use tracing::Instrument;

use super::errors::{failure_reason, forward_failed, write_error};
use super::{remaining, NodeError, RaftNode, Target};
use crate::raft::batch::{Batcher, ByteBound};
use crate::raft::rpc::{self, ForwardWrite, ForwardWriteResult};
use crate::raft::PeerNetwork;
use crate::store::{Command, CommandResult, Proposal};
use crate::telemetry::{metrics, trace};

impl RaftNode {
    /// Proposes `command` through the Raft log and returns what applying it did. An
    /// outcome the state machine could not know (applied by an earlier attempt whose
    /// answer was lost) is `OutcomeUnknown`.
    #[tracing::instrument(name = "kv.write", skip_all, fields(command = %command, node.id = self.inner.id))]
    pub async fn submit(&self, command: Command) -> Result<CommandResult, NodeError> {
        match self.write(command).await? {
            CommandResult::AppliedEarlier => Err(NodeError::OutcomeUnknown(
                "the write was applied, but its answer was lost with a database connection".into(),
            )),
            result => Ok(result),
        }
    }

    async fn write(&self, command: Command) -> Result<CommandResult, NodeError> {
        self.check_storage()?;
        self.check_space(&command)?;
        let deadline = Instant::now() + self.inner.request_timeout;
        self.with_leader(deadline, |target| {
            let command = command.clone();
            async move {
                match target {
                    Target::Here => self.write_until(command, deadline).await,
                    Target::Leader { id, raft_url } => {
                        self.forward_write(id, raft_url, command, deadline).await
                    }
                }
            }
        })
        .await
    }

    /// The leader's end of a (possibly forwarded) write. Never forwards again.
    pub(crate) async fn write_here(&self, command: Command) -> Result<CommandResult, NodeError> {
        self.check_storage()?;
        self.check_space(&command)?;
        self.write_until(command, Instant::now() + self.inner.request_timeout)
            .await
    }

    async fn write_until(
        &self,
        command: Command,
        deadline: Instant,
    ) -> Result<CommandResult, NodeError> {
        let proposals = &self.inner.proposal_bytes;
        let Some(_admitted) = proposals.admit(command.payload_bytes()) else {
            return Err(NodeError::Overloaded(proposals.refusal("on the leader")));
        };
        let budget = remaining(deadline);
        let span = tracing::info_span!("raft.propose", node.id = self.inner.id);
        let proposal = span.in_scope(|| Proposal {
            command,
            trace: trace::current_traceparent(),
        });
        if self.is_shut_down() {
            return Err(NodeError::Unavailable(
                "Raft has stopped on this node; nothing was proposed".into(),
            ));
        }
        let propose = self.inner.raft.client_write(proposal).instrument(span);
        let result = tokio::time::timeout(budget, propose).await.map_err(|_| {
            counter!(metrics::RAFT_PROPOSALS_FAILED, "reason" => "timeout").increment(1);
            NodeError::Timeout(self.inner.request_timeout)
        })?;
        match result {
            Ok(response) => Ok(response.data),
            Err(e) => {
                let e = write_error(e);
                counter!(metrics::RAFT_PROPOSALS_FAILED, "reason" => failure_reason(&e))
                    .increment(1);
                Err(e)
            }
        }
    }

    /// Hands a write to the leader, in the next batch, and waits for its verdict.
    #[tracing::instrument(name = "raft.forward", skip_all, fields(otel.kind = "client", leader))]
    async fn forward_write(
        &self,
        leader: u64,
        raft_url: String,
        command: Command,
        deadline: Instant,
    ) -> Result<CommandResult, NodeError> {
        counter!(metrics::FORWARDED, "kind" => "write").increment(1);
        let write = ForwardWrite {
            command,
            trace: trace::current_traceparent(),
        };
        let submitted = self.inner.writes.submit((leader, raft_url), write);
        match tokio::time::timeout(remaining(deadline), submitted).await {
            Ok(Some(result)) => result,
            Ok(None) => Err(NodeError::OutcomeUnknown(
                format!("forwarded to leader {leader}, no answer").into(),
            )),
            Err(_) => Err(NodeError::OutcomeUnknown(
                format!("forwarded to leader {leader}, no answer in time").into(),
            )),
        }
    }
}

/// The batcher of the writes a follower forwards: one `/raft/forward/writes` request
/// per batch, one result per write.
pub(super) fn write_batcher(
    network: PeerNetwork,
    timeout: Duration,
) -> Batcher<(u64, String), ForwardWrite, ForwardWriteResult> {
    let bound = ByteBound {
        weigh: rpc::forward_bytes,
        max_bytes: rpc::MAX_MESSAGE_BYTES,
    };
    Batcher::start(
        bound,
        move |(leader, raft_url): (u64, String), writes: Vec<ForwardWrite>| {
            let network = network.clone();
            async move {
                let count = writes.len();
                let data_bytes = writes.iter().map(rpc::forward_bytes).sum();
                let answer = network
                    .call::<_, Vec<ForwardWriteResult>>(
                        &raft_url,
                        leader,
                        rpc::FORWARD_WRITES,
                        (&writes, data_bytes),
                        timeout,
                    )
                    .await;
                let error = match answer {
                    Ok(results) if results.len() == count => return results,
                    Ok(results) => NodeError::OutcomeUnknown(
                        format!(
                            "leader {leader} answered {} results for {count} writes",
                            results.len()
                        )
                        .into(),
                    ),
                    Err(e) => forward_failed(leader, e),
                };
                vec![Err(error); count]
            }
        },
    )
}
