//! The Raft gauges of `/metrics`: a watcher task turns openraft's metrics into gauges,
//! and a sampler task reads the key count and the storage size every few seconds.

use std::future::Future;
use std::time::Duration;

use metrics::{counter, gauge};
use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use super::RaftNode;
use crate::telemetry::metrics::{
    KEYS, NODE_INFO, RAFT_APPLIED, RAFT_COMMITTED, RAFT_HEARTBEAT_AGE, RAFT_IS_LEADER, RAFT_LAG,
    RAFT_LAST_LOG, RAFT_LEADER_CHANGES, RAFT_LEADER_ID, RAFT_TERM, STORAGE_AVAILABLE, STORAGE_SIZE,
};

/// The shortest pause between two updates of the Raft gauges.
const METRICS_MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Keeps the Raft gauges in step with openraft's metrics, for as long as Raft runs or
/// until `stop` fires.
pub fn watch_raft(node: &RaftNode, stop: CancellationToken) -> impl Future<Output = ()> + Send {
    gauge!(
        NODE_INFO,
        "node_id" => node.id().to_string(),
        "version" => env!("CARGO_PKG_VERSION"),
        "storage" => node.storage_type().as_str()
    )
    .set(1.0);
    let mut rx = node.raft_metrics_watch();
    let weak = node.downgrade();
    async move {
        let mut leader: Option<u64> = None;
        loop {
            let m = rx.borrow_watched().clone();
            if m.running_state.is_err() || m.state == ServerState::Shutdown {
                return;
            }
            // The leader as clients see it: none while this node leads without a
            // majority, or has not heard from its leader, within the lease.
            // Held only for this call, so that the node (and its store) can close.
            let Some(node) = weak.upgrade() else { return };
            let in_touch = node.leader_in_touch().await;
            let storage_available = node.storage_available();
            drop(node);
            if m.current_leader.is_some() && m.current_leader != leader {
                counter!(RAFT_LEADER_CHANGES).increment(1);
            }
            leader = m.current_leader;
            gauge!(STORAGE_AVAILABLE).set(if storage_available { 1.0 } else { 0.0 });
            gauge!(RAFT_TERM).set(m.current_term as f64);
            gauge!(RAFT_IS_LEADER).set(if in_touch == Some(m.id) { 1.0 } else { 0.0 });
            gauge!(RAFT_LEADER_ID).set(in_touch.unwrap_or(0) as f64);
            gauge!(RAFT_LAST_LOG).set(m.last_log_index.unwrap_or(0) as f64);
            gauge!(RAFT_COMMITTED).set(m.local_committed.as_ref().map_or(0, |l| l.index) as f64);
            gauge!(RAFT_APPLIED).set(m.last_applied.as_ref().map_or(0, |l| l.index) as f64);
            if m.state == ServerState::Leader {
                let last = m.last_log_index.unwrap_or(0);
                for (id, matched) in m.replication.iter().flatten() {
                    if *id != m.id {
                        let behind = last.saturating_sub(matched.as_ref().map_or(0, |l| l.index));
                        gauge!(RAFT_LAG, "follower" => id.to_string()).set(behind as f64);
                    }
                }
                for (id, acked) in m.heartbeat.iter().flatten() {
                    if *id != m.id {
                        let age = acked.as_ref().map_or(f64::NAN, |at| {
                            openraft::Instant::elapsed(&**at).as_secs_f64()
                        });
                        gauge!(RAFT_HEARTBEAT_AGE, "follower" => id.to_string()).set(age);
                    }
                }
            }
            // Wake on a change, and at least once a second for the ages; but no more
            // than ten times a second: under load Raft's metrics change on every
            // commit, and scrapes come seconds apart.
            let next = async {
                tokio::time::sleep(METRICS_MIN_INTERVAL).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
            };
            if stop.run_until_cancelled(next).await.is_none() {
                return;
            }
        }
    }
}

/// Samples the key count and the storage size every five seconds, for as long as the
/// node exists (it holds the node only while sampling, so the store can close) or
/// until `stop` fires.
pub fn sample_storage(node: &RaftNode, stop: CancellationToken) -> impl Future<Output = ()> + Send {
    let weak = node.downgrade();
    async move {
        loop {
            {
                let Some(node) = weak.upgrade() else { return };
                if node.is_shut_down() {
                    return;
                }
                if let Ok(keys) = node.key_count().await {
                    gauge!(KEYS).set(keys as f64);
                }
                if let Ok(bytes) = node.storage_size().await {
                    gauge!(STORAGE_SIZE, "backend" => node.storage_type().as_str())
                        .set(bytes as f64);
                }
            }
            let pause = tokio::time::sleep(Duration::from_secs(5));
            if stop.run_until_cancelled(pause).await.is_none() {
                return;
            }
        }
    }
}
