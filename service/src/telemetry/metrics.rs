//! Prometheus metrics: one process-wide recorder, rendered by `GET /metrics`.
//!
//! Names follow Prometheus conventions: a `kvstore_` prefix, base units in the name
//! (`_seconds`, `_bytes`, `_entries`), `_total` on counters. HTTP and storage code
//! records into the recorder directly; so does the Raft layer, whose tasks turn openraft's
//! metrics into gauges and sample key counts and storage size (`raft/gauges.rs`).

use std::sync::OnceLock;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "kvstore_http_requests_total";
pub const HTTP_ERRORS: &str = "kvstore_http_errors_total";
pub const HTTP_DURATION: &str = "kvstore_http_request_duration_seconds";
pub const HTTP_IN_FLIGHT: &str = "kvstore_http_requests_in_flight";
pub const FORWARDED: &str = "kvstore_forwarded_requests_total";
pub const NODE_INFO: &str = "kvstore_node_info";
pub const RAFT_TERM: &str = "kvstore_raft_term";
pub const RAFT_IS_LEADER: &str = "kvstore_raft_is_leader";
pub const RAFT_LEADER_ID: &str = "kvstore_raft_leader_id";
pub const RAFT_LEADER_CHANGES: &str = "kvstore_raft_leader_changes_total";
pub const PRE_VOTE_ROUNDS: &str = "kvstore_raft_pre_vote_rounds_total";
/// The `outcome` labels of [`PRE_VOTE_ROUNDS`]: the round led to an election, or not.
pub const PRE_VOTE_ELECTION: &str = "election";
pub const PRE_VOTE_NO_ELECTION: &str = "no_election";
const PRE_VOTE_OUTCOMES: [&str; 2] = [PRE_VOTE_ELECTION, PRE_VOTE_NO_ELECTION];
pub const RAFT_LAST_LOG: &str = "kvstore_raft_last_log_index";
pub const RAFT_COMMITTED: &str = "kvstore_raft_committed_index";
pub const RAFT_APPLIED: &str = "kvstore_raft_applied_index";
pub const RAFT_LAG: &str = "kvstore_raft_replication_lag_entries";
pub const RAFT_HEARTBEAT_AGE: &str = "kvstore_raft_heartbeat_age_seconds";
pub const RAFT_PROPOSALS_FAILED: &str = "kvstore_raft_proposals_failed_total";
pub const SNAPSHOTS_BUILT: &str = "kvstore_raft_snapshots_built_total";
pub const SNAPSHOT_BUILD_DURATION: &str = "kvstore_raft_snapshot_build_duration_seconds";
pub const SNAPSHOTS_INSTALLED: &str = "kvstore_raft_snapshots_installed_total";
pub const SNAPSHOT_FAILURES: &str = "kvstore_raft_snapshot_failures_total";
/// The `operation` labels of [`SNAPSHOT_FAILURES`].
pub const SNAPSHOT_BUILD: &str = "build";
pub const SNAPSHOT_INSTALL: &str = "install";
pub const SNAPSHOT_INSTALL_DURATION: &str = "kvstore_raft_snapshot_install_duration_seconds";
pub const STORAGE_APPEND_DURATION: &str = "kvstore_storage_append_duration_seconds";
pub const STORAGE_APPLY_DURATION: &str = "kvstore_storage_apply_duration_seconds";
pub const KEYS: &str = "kvstore_keys";
pub const STORAGE_SIZE: &str = "kvstore_storage_size_bytes";
pub const OUT_OF_SPACE: &str = "kvstore_storage_out_of_space";
pub const STORAGE_AVAILABLE: &str = "kvstore_storage_available";
pub const LOG_LINES_DROPPED: &str = "kvstore_log_lines_dropped_total";
pub const LIST_PAGES: &str = "kvstore_list_pages_total";
pub const RANGE_DELETES: &str = "kvstore_range_deletes_total";
pub const RANGE_DELETED_KEYS: &str = "kvstore_range_deleted_keys_total";
pub const PRECONDITION_FAILURES: &str = "kvstore_precondition_failures_total";
pub const TXNS: &str = "kvstore_txns_total";
pub const LEASES_GRANTED: &str = "kvstore_leases_granted_total";
pub const LEASES_EXPIRED: &str = "kvstore_leases_expired_total";
pub const LEASE_EXPIRED_KEYS: &str = "kvstore_lease_expired_keys_total";
pub const LEASES: &str = "kvstore_leases";

/// Latency buckets from 100 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Why a proposal failed, as the `reason` label of [`RAFT_PROPOSALS_FAILED`].
pub const FAILURE_REASONS: &[&str] = &[
    "no_leader",
    "timeout",
    "outcome_unknown",
    "storage",
    "other",
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls reuse it) and describes every
/// metric, so `/metrics` carries HELP and TYPE lines from the first scrape.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("valid buckets")
                .build_recorder();
            let handle = recorder.handle();
            // A second recorder (another in-process node) keeps the first.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            let process = metrics_process::Collector::default();
            process.describe();
            let _ = PROCESS.set(process);
            handle
        })
        .clone()
}

/// The current metrics in Prometheus text format.
pub fn render() -> String {
    if let Some(process) = PROCESS.get() {
        process.collect();
    }
    counter!(LOG_LINES_DROPPED).absolute(super::dropped_log_lines());
    install().render()
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests served, by route, method and status."
    );
    describe_counter!(
        HTTP_ERRORS,
        "Error answers, by route and stable error code (the `code` of the JSON body)."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency, by route and method."
    );
    describe_gauge!(HTTP_IN_FLIGHT, "HTTP requests being served right now.");
    describe_counter!(
        FORWARDED,
        "Requests this node forwarded to the leader, by kind."
    );
    describe_gauge!(
        NODE_INFO,
        "Always 1; labels carry the node id, version and storage backend."
    );
    describe_gauge!(RAFT_TERM, "The current Raft term.");
    describe_gauge!(
        RAFT_IS_LEADER,
        "1 when this node is the Raft leader, else 0."
    );
    describe_gauge!(
        RAFT_LEADER_ID,
        "Node id of the leader this node knows of; 0 when none."
    );
    describe_counter!(RAFT_LEADER_CHANGES, "Times this node saw a new leader.");
    describe_counter!(
        LIST_PAGES,
        "Answers of GET /kv (ordered listing), by kind: pairs, keys (keys_only) or count \
         (count_only)."
    );
    describe_counter!(
        RANGE_DELETES,
        "Range deletes (DELETE /kv) this node answered, each one Raft log entry."
    );
    describe_counter!(
        RANGE_DELETED_KEYS,
        "Keys removed by the range deletes this node answered."
    );
    describe_counter!(
        PRECONDITION_FAILURES,
        "Conditional writes (If-Match / If-None-Match) this node answered 412: their \
         condition did not hold when they were applied."
    );
    describe_counter!(
        TXNS,
        "Transactions (POST /txn) this node answered, by result: `success` (the \
         comparisons held) or `failure`."
    );
    describe_counter!(
        LEASES_GRANTED,
        "Leases granted through this node (POST /leases, or a PUT with ttl_seconds)."
    );
    describe_counter!(
        LEASES_EXPIRED,
        "Leases that expired (their expiry applied on this node), each with its keys."
    );
    describe_counter!(
        LEASE_EXPIRED_KEYS,
        "Keys deleted on this node because their lease expired."
    );
    describe_gauge!(LEASES, "Leases this node tracks.");
    describe_counter!(
        PRE_VOTE_ROUNDS,
        "Pre-Vote rounds this node ran, by outcome: `election` (a majority would vote for \
         it, so it started an election) or `no_election` (it could not win, so its term \
         and the leader were left alone)."
    );
    describe_gauge!(
        RAFT_LAST_LOG,
        "Index of the last entry in this node's Raft log."
    );
    describe_gauge!(
        RAFT_COMMITTED,
        "Index of the last entry known to be committed."
    );
    describe_gauge!(
        RAFT_APPLIED,
        "Index of the last entry applied to the key-value data."
    );
    describe_gauge!(
        RAFT_LAG,
        "On the leader: entries each follower is behind the leader's log."
    );
    describe_gauge!(
        RAFT_HEARTBEAT_AGE,
        Unit::Seconds,
        "On the leader: time since each follower last acknowledged a heartbeat."
    );
    describe_counter!(
        RAFT_PROPOSALS_FAILED,
        "Client writes that did not commit, by reason."
    );
    describe_counter!(SNAPSHOTS_BUILT, "Snapshots this node built.");
    describe_histogram!(
        SNAPSHOT_BUILD_DURATION,
        Unit::Seconds,
        "Time to build a snapshot."
    );
    describe_counter!(
        SNAPSHOTS_INSTALLED,
        "Snapshots this node installed from a leader."
    );
    describe_histogram!(
        SNAPSHOT_INSTALL_DURATION,
        Unit::Seconds,
        "Time to install a snapshot."
    );
    describe_counter!(
        SNAPSHOT_FAILURES,
        "Snapshot builds and installs that failed, by operation (`build`, `install`)."
    );
    describe_histogram!(
        STORAGE_APPEND_DURATION,
        Unit::Seconds,
        "Time to append a batch of entries to the Raft log durably, by backend."
    );
    describe_histogram!(
        STORAGE_APPLY_DURATION,
        Unit::Seconds,
        "Time to apply a batch of committed entries to the key-value data, by backend."
    );
    describe_gauge!(KEYS, "Keys in this node's copy of the data.");
    describe_gauge!(
        STORAGE_SIZE,
        Unit::Bytes,
        "Size of the stored data: the redb file, or the PostgreSQL tables."
    );

    describe_gauge!(
        OUT_OF_SPACE,
        "1 while new values are refused: past storage.quota_bytes, or below storage.min_free_bytes free."
    );
    gauge!(OUT_OF_SPACE).set(0.0);
    describe_gauge!(
        STORAGE_AVAILABLE,
        "1 while the storage backend answers; 0 while it cannot be reached (PostgreSQL down)."
    );

    describe_counter!(
        LOG_LINES_DROPPED,
        "Log lines dropped because the log writer's queue (logging.buffer_lines) was full."
    );

    // Counters that a dashboard queries must exist before their first event.
    counter!(LOG_LINES_DROPPED).absolute(0);
    counter!(RAFT_LEADER_CHANGES).absolute(0);
    for outcome in PRE_VOTE_OUTCOMES {
        counter!(PRE_VOTE_ROUNDS, "outcome" => outcome).absolute(0);
    }
    counter!(SNAPSHOTS_BUILT).absolute(0);
    counter!(SNAPSHOTS_INSTALLED).absolute(0);
    // An alert on `increase()` needs the series before the first failure.
    for operation in [SNAPSHOT_BUILD, SNAPSHOT_INSTALL] {
        counter!(SNAPSHOT_FAILURES, "operation" => operation).absolute(0);
    }
    for reason in FAILURE_REASONS {
        counter!(RAFT_PROPOSALS_FAILED, "reason" => *reason).absolute(0);
    }
    for kind in ["write", "read_index", "admin"] {
        counter!(FORWARDED, "kind" => kind).absolute(0);
    }
}
