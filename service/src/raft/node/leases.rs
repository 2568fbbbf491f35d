//! Leases: granted, kept alive and revoked through the Raft log like any write; read
//! with the requested consistency; expired by the leader, which proposes the expiry
//! through the log so that every node deletes the same keys at the same revision.

use std::time::Duration;

use ::metrics::gauge;
use tokio_util::sync::CancellationToken;

use super::errors::storage;
use super::{Consistency, NodeError, RaftNode};
use crate::store::Command;
use crate::telemetry::metrics;
use crate::types::Lease;

/// How often the leader looks for leases past their deadline.
const EXPIRY_TICK: Duration = Duration::from_millis(50);
/// How long an expiry the leader proposed may take before it proposes it again.
const EXPIRY_RETRY: Duration = Duration::from_secs(2);
/// Leases per expiry entry.
const EXPIRY_BATCH: usize = 1000;

/// A lease as `GET /leases/{id}` shows it.
#[derive(Debug, Clone)]
pub struct LeaseInfo {
    pub lease: Lease,
    /// What is left of its TTL as this node counts it (`None`: not tracked here yet).
    pub remaining: Option<Duration>,
    /// Its keys, the first ones in key order.
    pub keys: Vec<String>,
}

impl RaftNode {
    /// Lease `id` with up to `max_keys` of its keys, with the requested consistency.
    #[tracing::instrument(name = "lease.get", skip_all, fields(lease.id = id, node.id = self.inner.id))]
    pub async fn lease(
        &self,
        id: u64,
        max_keys: usize,
        consistency: Consistency,
    ) -> Result<Option<LeaseInfo>, NodeError> {
        self.before_read(consistency).await?;
        let store = &self.inner.store;
        let Some(lease) = store.lease(id).await.map_err(storage)? else {
            return Ok(None);
        };
        let keys = store.lease_keys(id, max_keys).await.map_err(storage)?;
        Ok(Some(LeaseInfo {
            lease,
            remaining: store.lease_clock().remaining(id),
            keys,
        }))
    }

    /// Expires leases past their deadline while this node leads; runs until `stop`.
    /// On becoming leader it first gives every lease at least an election timeout
    /// more, so that clients whose keepalives went to the old leader reach this one.
    pub fn expire_leases(
        &self,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send {
        let weak = self.downgrade();
        async move {
            let mut was_leader = false;
            loop {
                {
                    let Some(node) = weak.upgrade() else { return };
                    if node.is_shut_down() {
                        return;
                    }
                    let clock = node.inner.store.lease_clock();
                    gauge!(metrics::LEASES).set(clock.len() as f64);
                    let leader = node.metrics().current_leader == Some(node.inner.id);
                    if leader && !was_leader {
                        // `lease` is the longest election timeout; the shortest is half
                        // of it (see `bootstrap`).
                        clock.extend_all(node.inner.lease / 2);
                    }
                    was_leader = leader;
                    if leader {
                        node.propose_expiries().await;
                    }
                }
                let pause = tokio::time::sleep(EXPIRY_TICK);
                if stop.run_until_cancelled(pause).await.is_none() {
                    return;
                }
            }
        }
    }

    /// Proposes the expiry of the leases now due, without waiting for it to commit:
    /// leases that come due meanwhile are proposed at the next tick, not a commit later.
    async fn propose_expiries(&self) {
        let due = self.inner.store.lease_clock().due(EXPIRY_RETRY);
        for chunk in due.chunks(EXPIRY_BATCH) {
            let command = Command::LeaseExpire {
                leases: chunk.to_vec(),
            };
            let (node, leases) = (self.clone(), chunk.len());
            tokio::spawn(async move {
                if let Err(error) = node.write_here(command).await {
                    // Proposed again after EXPIRY_RETRY, by this node or the next leader.
                    tracing::warn!(%error, leases, "could not expire leases yet");
                }
            });
        }
    }
}
