//! Knowing the leader: whether this node is in touch with one (itself with a majority's
//! acknowledgement, or the leader it follows), and running a request against it,
//! again while it provably had no effect.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::error::RaftError;
use openraft::ServerState;

use super::{remaining, NodeError, RaftNode, Target, TypeConfig};
use crate::raft::typ::RaftMetrics;

/// How long a retry waits for news (a leader change) before trying again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

impl RaftNode {
    /// Whether this node is the leader but no majority has acknowledged it within the
    /// lease. openraft then refuses new writes but keeps the role (so that it can resume
    /// at once if the majority comes back); kvstore answers its clients `NO_LEADER` at
    /// once instead of letting them wait.
    fn leads_without_quorum(&self, m: &RaftMetrics) -> bool {
        if m.state != ServerState::Leader || m.current_leader != Some(self.inner.id) {
            return false;
        }
        if m.membership_config.membership().voter_ids().count() <= 1 {
            return false; // a single voter is its own majority
        }
        m.last_quorum_acked
            .as_ref()
            .is_some_and(|acked| openraft::Instant::elapsed(&**acked) > self.inner.lease)
    }

    /// The leader this node is in touch with: itself while a majority acknowledges it
    /// within the lease, or the leader it follows while that leader's heartbeats arrive
    /// within the lease. `None` when no leader is known or it has gone quiet (this node
    /// may be cut off). With Pre-Vote a cut-off follower keeps its last leader in Raft's
    /// view (it never raises its term), so this is what tells that it is alone.
    pub async fn leader_in_touch(&self) -> Option<u64> {
        let m = self.metrics();
        let leader = m.current_leader?;
        if leader == self.inner.id {
            return (!self.leads_without_quorum(&m)).then_some(leader);
        }
        self.follower_in_touch().await.then_some(leader)
    }

    /// Whether this node, as a follower, has heard from its leader within the lease.
    async fn follower_in_touch(&self) -> bool {
        let contact = self.inner.leader_contact.load(Ordering::Relaxed);
        if contact > 0 {
            let at = self.inner.started_at + Duration::from_millis(contact - 1);
            if at.elapsed() <= self.inner.lease {
                return true;
            }
        }
        // No recent AppendEntries seen here (a snapshot may be arriving instead): ask
        // Raft when the leader last renewed this node's lease.
        let heard = self
            .inner
            .raft
            .with_raft_state(|state| state.vote_last_modified())
            .await
            .ok()
            .flatten();
        heard.is_some_and(|at| openraft::Instant::elapsed(&at) <= self.inner.lease)
    }

    /// Hands AppendEntries from a leader to Raft, noting the contact when it is accepted.
    pub(crate) async fn append_entries(
        &self,
        req: openraft::raft::AppendEntriesRequest<TypeConfig>,
    ) -> Result<openraft::raft::AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>> {
        let result = self.inner.raft.append_entries(req).await;
        if matches!(
            result,
            Ok(openraft::raft::AppendEntriesResponse::Success
                | openraft::raft::AppendEntriesResponse::PartialSuccess(_)
                | openraft::raft::AppendEntriesResponse::Conflict)
        ) {
            let now =
                u64::try_from(self.inner.started_at.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            self.inner.leader_contact.store(now + 1, Ordering::Relaxed);
        }
        result
    }

    /// Runs `attempt` against the current leader, and again whenever it fails in a way
    /// that provably had no effect (no leader yet, leader unreachable), until `deadline`.
    pub(super) async fn with_leader<T, F, Fut>(
        &self,
        deadline: Instant,
        attempt: F,
    ) -> Result<T, NodeError>
    where
        F: Fn(Target) -> Fut,
        Fut: std::future::Future<Output = Result<T, NodeError>>,
    {
        let mut metrics = self.inner.raft.metrics();
        loop {
            let target = {
                let m = metrics.borrow_watched();
                if self.leads_without_quorum(&m) {
                    // Waiting would not help: the majority may have moved on without
                    // this node, and it cannot tell until the partition heals.
                    return Err(NodeError::NoQuorum(self.inner.lease));
                }
                match m.current_leader {
                    Some(leader) if leader == self.inner.id => Some(Target::Here),
                    Some(leader) => {
                        m.membership_config
                            .membership()
                            .get_node(&leader)
                            .map(|node| Target::Leader {
                                id: leader,
                                raft_url: node.raft_addr.clone(),
                            })
                    }
                    None => None,
                }
            };
            // A follower that has not heard from its leader within the lease is as good as
            // leaderless: forwarding would only wait on a leader it cannot reach.
            let lost = match &target {
                Some(Target::Leader { id, .. }) if !self.follower_in_touch().await => Some(*id),
                _ => None,
            };
            let result = match (target, lost) {
                (_, Some(last)) => Err(NodeError::NoLeader { leader: Some(last) }),
                (Some(target), None) => attempt(target).await,
                (None, None) => Err(NodeError::NoLeader { leader: None }),
            };
            match result {
                Err(e) if e.is_retryable() && !remaining(deadline).is_zero() => {
                    let pause = remaining(deadline).min(RETRY_PAUSE);
                    let _ = tokio::time::timeout(pause, metrics.changed()).await;
                }
                other => return other,
            }
        }
    }
}
