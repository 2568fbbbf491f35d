//! Membership: the members as this node knows them, replication progress, and changes
//! (add a learner, promote, remove, transfer leadership), run on the leader.

use std::collections::BTreeSet;
use std::time::Instant;

use ::metrics::counter;
use openraft::{ChangeMembers, ServerState};

use super::errors::{forward_failed, storage, unknown, write_error, Cause};
use super::{remaining, FollowerProgress, MemberInfo, NodeError, RaftNode, Target};
use crate::raft::rpc::{self, AdminOp};
use crate::raft::NodeAddr;
use crate::telemetry::metrics;

impl RaftNode {
    /// The members of the cluster as this node knows them.
    pub fn members(&self) -> Vec<MemberInfo> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, addr)| MemberInfo {
                id: *id,
                addr: addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    /// On the leader, every follower's replication progress; elsewhere, `None`.
    pub fn followers(&self) -> Option<Vec<FollowerProgress>> {
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return None;
        }
        let last = m.last_log_index.unwrap_or(0);
        let replication = m.replication.as_ref()?;
        Some(
            replication
                .iter()
                .filter(|(id, _)| **id != self.inner.id)
                .map(|(id, matched)| {
                    let matched_index = matched.as_ref().map(|l| l.index);
                    FollowerProgress {
                        id: *id,
                        matched_index,
                        lag: last.saturating_sub(matched_index.unwrap_or(0)),
                    }
                })
                .collect(),
        )
    }

    /// Applies a membership change on the leader.
    pub async fn admin(&self, op: AdminOp) -> Result<(), NodeError> {
        self.check_storage()?;
        let deadline = Instant::now() + self.inner.request_timeout;
        self.with_leader(deadline, |target| {
            let op = op.clone();
            async move {
                match target {
                    Target::Here => self.admin_until(op, deadline).await,
                    Target::Leader { id, raft_url } => {
                        self.forward_admin(id, &raft_url, &op, deadline).await
                    }
                }
            }
        })
        .await
    }

    /// The leader's end of a (possibly forwarded) membership change.
    pub(crate) async fn admin_here(&self, op: AdminOp) -> Result<(), NodeError> {
        self.admin_until(op, Instant::now() + self.inner.request_timeout)
            .await
    }

    async fn admin_until(&self, op: AdminOp, deadline: Instant) -> Result<(), NodeError> {
        let members = self.members();
        let voters: BTreeSet<u64> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
        let learners: BTreeSet<u64> = members.iter().filter(|m| !m.voter).map(|m| m.id).collect();
        let raft = &self.inner.raft;
        match op {
            AdminOp::AddLearner { id, node } => {
                if self
                    .inner
                    .store
                    .retired_ids()
                    .await
                    .map_err(storage)?
                    .contains(&id)
                {
                    return Err(NodeError::InvalidMembership(
                        format!("node id {id} belonged to a removed node; ids are never reused")
                            .into(),
                    ));
                }
                if voters.contains(&id) {
                    return Err(NodeError::InvalidMembership(
                        format!("node {id} is already a voter").into(),
                    ));
                }
                let added =
                    tokio::time::timeout(remaining(deadline), raft.add_learner(id, node, true))
                        .await
                        .map_err(|_| NodeError::Timeout(self.inner.request_timeout))?;
                added.map(|_| ()).map_err(write_error)
            }
            AdminOp::Promote { ids } => {
                if let Some(bad) = ids.iter().find(|id| !learners.contains(id)) {
                    return Err(unknown(*bad, "a learner"));
                }
                self.change(ChangeMembers::AddVoterIds(ids), deadline).await
            }
            AdminOp::Remove { ids } => {
                if let Some(bad) = ids
                    .iter()
                    .find(|id| !voters.contains(id) && !learners.contains(id))
                {
                    return Err(unknown(*bad, "a member"));
                }
                let gone_voters: BTreeSet<u64> = ids.intersection(&voters).copied().collect();
                if gone_voters.len() == voters.len() {
                    return Err(NodeError::InvalidMembership(
                        "cannot remove every voter".into(),
                    ));
                }
                if !gone_voters.is_empty() {
                    self.change(ChangeMembers::RemoveVoters(gone_voters), deadline)
                        .await?;
                }
                let gone_learners: BTreeSet<u64> = ids.intersection(&learners).copied().collect();
                if !gone_learners.is_empty() {
                    self.change(ChangeMembers::RemoveNodes(gone_learners), deadline)
                        .await?;
                }
                Ok(())
            }
            AdminOp::TransferLeader { to } => {
                if !voters.contains(&to) {
                    return Err(unknown(to, "a voter"));
                }
                raft.trigger()
                    .transfer_leader(to)
                    .await
                    .map_err(|e| NodeError::Unavailable(Cause::new(e)))
            }
        }
    }

    async fn change(
        &self,
        change: ChangeMembers<u64, NodeAddr>,
        deadline: Instant,
    ) -> Result<(), NodeError> {
        let result = tokio::time::timeout(
            remaining(deadline),
            self.inner.raft.change_membership(change, false),
        )
        .await
        .map_err(|_| NodeError::Timeout(self.inner.request_timeout))?;
        result.map(|_| ()).map_err(write_error)
    }

    /// Hands a membership change to the leader's Raft listener and returns its verdict.
    #[tracing::instrument(name = "raft.forward", skip_all, fields(otel.kind = "client", url.path = rpc::FORWARD_ADMIN, leader))]
    async fn forward_admin(
        &self,
        leader: u64,
        raft_url: &str,
        op: &AdminOp,
        deadline: Instant,
    ) -> Result<(), NodeError> {
        counter!(metrics::FORWARDED, "kind" => "admin").increment(1);
        self.inner
            .network
            .call::<_, rpc::AdminResult>(
                raft_url,
                leader,
                rpc::FORWARD_ADMIN,
                (op, 0),
                remaining(deadline),
            )
            .await
            .unwrap_or_else(|e| Err(forward_failed(leader, e)))
    }
}
