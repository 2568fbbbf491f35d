//! Running out of space: the storage quota and free-space floor, and a leader whose
//! disk is full handing leadership over.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use super::{NodeError, RaftNode};
use crate::store::{self, Command};
use crate::telemetry::metrics;

/// How often a leader whose disk is full may hand leadership over.
const HAND_OFF_EVERY: Duration = Duration::from_secs(10);

impl RaftNode {
    /// Checks the storage limits twice a second for as long as the node exists (it holds
    /// the node only while checking, so the store can close) or until `stop` fires.
    pub fn watch_space(&self, stop: CancellationToken) -> impl Future<Output = ()> + Send {
        let weak = self.downgrade();
        async move {
            let mut handed_off: Option<Instant> = None;
            loop {
                {
                    let Some(node) = weak.upgrade() else { return };
                    if node.is_shut_down() {
                        return;
                    }
                    node.inner.store.retry_failed_writes().await;
                    node.hand_off_if_disk_full(&mut handed_off).await;
                    if let Ok(stored) = node.inner.store.size_bytes().await {
                        let full = node.inner.space.check(stored);
                        ::metrics::gauge!(metrics::OUT_OF_SPACE).set(if full { 1.0 } else { 0.0 });
                    }
                }
                let pause = tokio::time::sleep(store::space::CHECK_INTERVAL);
                if stop.run_until_cancelled(pause).await.is_none() {
                    return;
                }
            }
        }
    }

    /// A leader whose disk is full (a write failed for want of space) can neither append
    /// nor apply, so the cluster would take no writes while it leads. It hands
    /// leadership to the voter that holds the most of the log, at most once every
    /// [`HAND_OFF_EVERY`] (if every disk is full, leadership would otherwise bounce).
    async fn hand_off_if_disk_full(&self, last: &mut Option<Instant>) {
        if !self.inner.disk_full.is_full() || last.is_some_and(|t| t.elapsed() < HAND_OFF_EVERY) {
            return;
        }
        let m = self.metrics();
        if m.state != ServerState::Leader || m.current_leader != Some(self.inner.id) {
            return;
        }
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        let Some(target) = self
            .followers()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| voters.contains(&f.id))
            .max_by_key(|f| f.matched_index)
        else {
            return; // a single voter: nobody to hand over to
        };
        *last = Some(Instant::now());
        tracing::warn!(
            to = target.id,
            "this leader's disk is full: handing leadership to node {}",
            target.id
        );
        if let Err(e) = self.inner.raft.trigger().transfer_leader(target.id).await {
            tracing::warn!(error = %e, "cannot hand leadership over");
        }
    }

    /// Why this node cannot write to its disk right now, if a write failed for want of
    /// space (and is being retried).
    pub fn disk_full(&self) -> Option<String> {
        self.inner.disk_full.reason()
    }

    /// Refuses a new value (a put, a transaction that puts, a new lease) at once while
    /// the node is out of space; deletes, revokes and keepalives pass, since they make
    /// room or keep what is there.
    pub(super) fn check_space(&self, command: &Command) -> Result<(), NodeError> {
        let adds = match command {
            Command::Put { .. } | Command::LeaseGrant { .. } => true,
            Command::Txn(txn) => txn
                .success
                .iter()
                .chain(&txn.failure)
                .any(|op| matches!(op, crate::types::TxnOp::Put { .. })),
            _ => false,
        };
        match (adds, self.inner.space.refusal()) {
            (true, Some(why)) => Err(NodeError::NoSpace(why)),
            _ => Ok(()),
        }
    }
}
