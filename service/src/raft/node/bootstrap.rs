//! Starting a node: open storage, build the Raft handle, and on the very first start
//! initialise the cluster.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::SnapshotPolicy;

use super::reads::read_index_batcher;
use super::writes::write_batcher;
use super::{Inner, Raft, RaftNode};
use crate::admission::ByteBudget;
use crate::config::Settings;
use crate::raft::{NodeAddr, PeerNetwork};
use crate::store;

/// Opens storage and starts Raft. On the very first start (no vote or log on disk) the
/// node initialises the cluster: with `cluster.initial_members`, or alone; unless
/// `cluster.bootstrap` is off, when it waits to be added. Every member of a new cluster
/// initialises with the same membership, which openraft accepts. A node whose storage
/// holds Raft state is never initialised again.
pub async fn start(settings: &Settings, advertised: NodeAddr) -> anyhow::Result<RaftNode> {
    let store = store::open(settings).await?;
    // Every lease starts a full TTL from now: never earlier than the deadline a client
    // counts on, whatever happened while this node was down.
    store.handle.load_leases().await?;
    let election = millis(settings.raft.election_timeout);
    let config = openraft::Config {
        cluster_name: "kvstore".into(),
        heartbeat_interval: millis(settings.raft.heartbeat_timeout),
        election_timeout_min: election,
        election_timeout_max: election * 2,
        // Snapshots are sent whole, in one request; give them time.
        install_snapshot_timeout: 60_000,
        max_payload_entries: 64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.raft.snapshot_interval),
        max_in_snapshot_log_to_keep: settings.raft.snapshot_logs_to_keep,
        // A restarted leader must win an election again. Restored as leader at once, it
        // would take its read index from a committed index it persisted lazily, and
        // serve reads older than writes it had acknowledged before the restart (seen
        // when a whole cluster loses power).
        enable_leader_restore: Some(false),
        enable_pre_vote: Some(settings.raft.pre_vote),
        ..Default::default()
    }
    .validate()?;
    let lease = Duration::from_millis(config.election_timeout_max);

    let local_ip = settings
        .raft_listen_addr()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified());
    let network = PeerNetwork::new(
        &settings.cluster.secret,
        local_ip,
        crate::tls::client_config(&settings.tls)?,
    )?
    .with_pre_vote_round_time(lease);
    let id = settings.raft.node_id;
    let raft = Raft::new(
        id,
        Arc::new(config),
        network.clone(),
        store.log_store,
        store.state_machine,
    )
    .await?;

    if raft.is_initialized().await? {
        tracing::info!(
            node_id = id,
            "raft state found on disk; rejoining the cluster"
        );
        // After a crash the state machine may be ahead of the last snapshot and of the
        // durable log, and openraft then purges the log up to what was applied. Until
        // a snapshot covers the purged entries, a lagging follower could not be served:
        // build one now.
        let m = raft.metrics().borrow_watched().clone();
        let snapshot = m.snapshot.as_ref().map(|l| l.index);
        let purged = m.purged.as_ref().map(|l| l.index);
        if purged > snapshot {
            tracing::info!(
                ?purged,
                ?snapshot,
                "log purged past the snapshot; building one"
            );
            raft.trigger().snapshot().await?;
        }
    } else if !settings.cluster.bootstrap {
        tracing::info!(node_id = id, "empty node waiting to be added to a cluster");
    } else {
        let members: BTreeMap<u64, NodeAddr> = if settings.cluster.initial_members.is_empty() {
            BTreeMap::from([(id, advertised)])
        } else {
            settings
                .cluster
                .initial_members
                .iter()
                .map(|m| {
                    let addr = NodeAddr {
                        api_addr: m.api_addr.trim_end_matches('/').to_string(),
                        raft_addr: m.raft_addr.trim_end_matches('/').to_string(),
                    };
                    (m.id, addr)
                })
                .collect()
        };
        let ids: Vec<u64> = members.keys().copied().collect();
        raft.initialize(members).await?;
        tracing::info!(node_id = id, voters = ?ids, "initialised a new cluster");
    }

    let read_indexes = read_index_batcher(
        raft.clone(),
        network.clone(),
        settings.server.request_timeout,
    );
    Ok(RaftNode {
        inner: Arc::new(Inner {
            id,
            raft,
            store: store.handle,
            writes: write_batcher(network.clone(), settings.server.request_timeout),
            read_indexes,
            network,
            proposal_bytes: ByteBudget::new(settings.server.max_in_flight_bytes),
            storage_type: settings.storage.kind,
            request_timeout: settings.server.request_timeout,
            lease,
            space: store::space::Space::new(
                settings.storage.quota_bytes,
                settings.storage.min_free_bytes,
                settings.storage.data_dir.clone(),
                store.disk_full.clone(),
            ),
            disk_full: store.disk_full,
            leader_contact: AtomicU64::new(0),
            started_at: Instant::now(),
            incoming_snapshots: settings.storage.data_dir.join("snapshots").join("incoming"),
        }),
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
