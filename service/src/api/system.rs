//! `/health`, `/ready` and `/status`: is the process up, can it serve, and what is its
//! Raft state.

use openraft::ServerState;
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::auth::ClientAuth;
use super::error::ApiError;
use super::route_error::{Ready, RouteError, Status};
use super::ApiTags;
use crate::raft::RaftNode;

#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct HealthResponse {
    /// Always true: the process is alive and serving HTTP.
    pub healthy: bool,
    /// Server time, RFC 3339.
    pub timestamp: String,
}

impl Example for HealthResponse {
    fn example() -> Self {
        HealthResponse {
            healthy: true,
            timestamp: "2026-11-27T10:00:00.000Z".into(),
        }
    }
}

#[derive(Debug, Clone, Object)]
pub struct ReadyResponse {
    pub ready: bool,
    pub node_id: u64,
    /// The leader this node follows (or itself).
    pub leader_id: u64,
}

#[derive(Debug, Clone, Object)]
pub struct LeaderView {
    pub id: u64,
    /// Base URL of the leader's client API.
    pub api_addr: String,
}

#[derive(Debug, Clone, Object)]
pub struct FollowerView {
    pub id: u64,
    /// The last log index known to be replicated to this follower.
    #[oai(nullable)]
    pub matched_index: Option<u64>,
    /// How many entries it is behind the leader's last log index.
    pub lag: u64,
}

#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct StatusResponse {
    /// Always `kvstore`: which server answers (a field existing clients of the API read).
    pub server: String,
    /// `healthy` when this node can serve reads and writes (what `/ready` answers 200
    /// for), otherwise `degraded`: no leader known, applying behind, storage
    /// unreachable, or Raft stopped.
    pub status: String,
    pub node_id: u64,
    /// leader, follower, candidate, learner or shutdown.
    pub role: String,
    pub term: u64,
    /// The current leader's id, if one is known and in touch: null while this node leads
    /// without a majority, or has not heard from its leader, within the leader lease.
    #[oai(nullable)]
    pub leader_id: Option<u64>,
    /// The current leader's id and API address, if one is known.
    #[oai(nullable)]
    pub leader: Option<LeaderView>,
    /// Every cluster member with its role.
    pub members: Vec<super::cluster::MemberView>,
    /// On the leader only: each follower's replication progress.
    #[oai(nullable)]
    pub followers: Option<Vec<FollowerView>>,
    /// Index of the last entry in this node's Raft log.
    #[oai(nullable)]
    pub last_log_index: Option<u64>,
    /// Index of the last entry known to be committed.
    #[oai(nullable)]
    pub committed_index: Option<u64>,
    /// Index of the last entry applied to the key-value data.
    #[oai(nullable)]
    pub applied_index: Option<u64>,
    /// Last log index included in this node's latest snapshot.
    #[oai(nullable)]
    pub snapshot_index: Option<u64>,
    /// Entries up to this index have been removed from the log (they live in the
    /// snapshot).
    #[oai(nullable)]
    pub purged_index: Option<u64>,
    /// Number of keys in this node's copy of the data.
    pub key_count: u64,
    /// `file` (embedded redb) or `database` (PostgreSQL).
    pub storage_type: String,
    pub version: String,
    pub uptime_seconds: f64,
    /// Server time, RFC 3339.
    pub timestamp: String,
}

impl Example for StatusResponse {
    fn example() -> Self {
        StatusResponse {
            server: SERVER_NAME.into(),
            status: HEALTHY.into(),
            node_id: 1,
            role: "leader".into(),
            term: 1,
            leader_id: Some(1),
            leader: Some(LeaderView {
                id: 1,
                api_addr: "http://127.0.0.1:8081".into(),
            }),
            members: vec![super::cluster::MemberView {
                id: 1,
                role: "voter".into(),
                api_addr: "http://127.0.0.1:8081".into(),
                raft_addr: "http://127.0.0.1:9001".into(),
            }],
            followers: Some(vec![]),
            last_log_index: Some(42),
            committed_index: Some(42),
            applied_index: Some(42),
            snapshot_index: Some(40),
            purged_index: Some(30),
            key_count: 17,
            storage_type: "file".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: 3600.5,
            timestamp: "2026-11-27T10:00:00.000Z".into(),
        }
    }
}

#[derive(ApiResponse)]
pub enum HealthResult {
    /// The process is alive.
    #[oai(status = 200)]
    Ok(Json<HealthResponse>),
}

#[derive(ApiResponse)]
pub enum ReadyResult {
    /// A leader is known and everything known to be committed is applied.
    #[oai(status = 200)]
    Ok(Json<ReadyResponse>),
}

#[derive(ApiResponse)]
pub enum StatusResult {
    #[oai(status = 200)]
    Ok(Json<StatusResponse>),
}

pub struct SystemApi {
    pub node: RaftNode,
}

/// `/status`'s `server`.
const SERVER_NAME: &str = "kvstore";
/// `/status`'s `status` while the node can serve, and otherwise.
const HEALTHY: &str = "healthy";
/// How long a node whose applied index trails its committed index may take to catch up
/// before it counts as not ready (well inside a probe's usual one-second timeout).
const APPLY_GRACE: std::time::Duration = std::time::Duration::from_millis(500);
const DEGRADED: &str = "degraded";

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[OpenApi(tag = "ApiTags::System")]
impl SystemApi {
    /// Liveness
    ///
    /// 200 whenever the process is up and serving HTTP, whatever the cluster's state.
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self) -> HealthResult {
        HealthResult::Ok(Json(HealthResponse {
            healthy: true,
            timestamp: now_rfc3339(),
        }))
    }

    /// Readiness
    ///
    /// 200 only when this node is in touch with a leader (it leads with a majority's
    /// acknowledgement, or its leader's heartbeats arrive, within the leader lease),
    /// has applied every entry it knows to be committed, and its last write to disk did
    /// not fail for want of space; otherwise 503 `NOT_READY` with the reason.
    #[oai(path = "/ready", method = "get", operation_id = "ready")]
    async fn ready(&self) -> Result<ReadyResult, RouteError<Ready>> {
        let leader_id = self.readiness().await.map_err(ApiError::NotReady)?;
        Ok(ReadyResult::Ok(Json(ReadyResponse {
            ready: true,
            node_id: self.node.id(),
            leader_id,
        })))
    }

    /// Prometheus metrics
    ///
    /// This node's metrics in the Prometheus text format: HTTP, Raft, storage and process.
    #[oai(path = "/metrics", method = "get", operation_id = "metrics")]
    async fn metrics(&self) -> PlainText<String> {
        PlainText(crate::telemetry::metrics::render())
    }

    /// Node status
    ///
    /// This node's Raft role, term, leader and log indexes, with storage and process
    /// facts.
    ///
    /// With `auth.tokens` set, needs a token with the `read` role.
    #[oai(path = "/status", method = "get", operation_id = "status")]
    async fn status(&self, _auth: ClientAuth) -> Result<StatusResult, RouteError<Status>> {
        let m = self.node.metrics();
        let members = self.node.members();
        let leader_id = self.node.leader_in_touch().await;
        let leader = leader_id.and_then(|id| {
            members
                .iter()
                .find(|mem| mem.id == id)
                .map(|mem| LeaderView {
                    id,
                    api_addr: mem.addr.api_addr.clone(),
                })
        });
        let followers = self.node.followers().map(|list| {
            list.into_iter()
                .map(|f| FollowerView {
                    id: f.id,
                    matched_index: f.matched_index,
                    lag: f.lag,
                })
                .collect()
        });
        let status = if self.readiness().await.is_ok() {
            HEALTHY
        } else {
            DEGRADED
        };
        Ok(StatusResult::Ok(Json(StatusResponse {
            server: SERVER_NAME.into(),
            status: status.into(),
            node_id: self.node.id(),
            role: role_name(m.state).into(),
            term: m.current_term,
            leader_id,
            leader,
            members: members.into_iter().map(Into::into).collect(),
            followers,
            last_log_index: m.last_log_index,
            committed_index: m.local_committed.as_ref().map(|id| id.index),
            applied_index: m.last_applied.as_ref().map(|id| id.index),
            snapshot_index: m.snapshot.as_ref().map(|id| id.index),
            purged_index: m.purged.as_ref().map(|id| id.index),
            key_count: self.node.key_count().await?,
            storage_type: self.node.storage_type().as_str().into(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.node.uptime().as_secs_f64(),
            timestamp: now_rfc3339(),
        })))
    }
}

impl SystemApi {
    /// Whether this node can serve: the leader it follows, or why it cannot.
    async fn readiness(&self) -> Result<u64, String> {
        let m = self.node.metrics();
        if let Err(e) = &m.running_state {
            return Err(format!("raft has stopped: {e}"));
        }
        if !self.node.storage_available() {
            return Err("the storage backend is unreachable".into());
        }
        if let Some(reason) = self.node.disk_full() {
            return Err(reason);
        }
        let Some(leader_id) = self.node.leader_in_touch().await else {
            return Err(match m.current_leader {
                Some(id) if id == self.node.id() => {
                    "this node leads but has not heard from a majority within the leader lease"
                        .into()
                }
                Some(id) => {
                    format!("no heartbeat from the leader (node {id}) within the leader lease")
                }
                None => "no leader is known".into(),
            });
        };
        let committed = m.local_committed.as_ref().map(|id| id.index);
        let applied = m.last_applied.as_ref().map(|id| id.index);
        let caught_up = match committed {
            Some(index) if applied < committed => self.node.applies_up_to(index, APPLY_GRACE).await,
            _ => true,
        };
        if !caught_up {
            return Err(format!(
                "applied index {} is behind committed index {}",
                applied.map_or("none".into(), |i| i.to_string()),
                committed.map_or("none".into(), |i| i.to_string()),
            ));
        }
        Ok(leader_id)
    }
}
