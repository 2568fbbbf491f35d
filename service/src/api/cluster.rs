//! `/cluster/...`: membership administration. Any node accepts these; changes run on
//! the leader. With `cluster.secret` set, every route needs it in `x-kvstore-secret`
//! ([`ClusterSecret`]); with `auth.tokens` set, every route also needs a bearer token with the `admin` role.

use std::collections::BTreeSet;

use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;

use super::auth::ClientAuth;
use super::body::JsonBody;
use super::cluster_secret::ClusterSecret;
use super::error::ApiError;
use super::route_error::{ClusterChange, ClusterList, ClusterRemove, RouteError};
use super::ApiTags;
use crate::raft::rpc::AdminOp;
use crate::raft::{MemberInfo, NodeAddr, RaftNode};

#[derive(Debug, Clone, Object)]
pub struct MemberView {
    pub id: u64,
    /// `voter` or `learner`.
    pub role: String,
    /// Base URL of the member's client API.
    pub api_addr: String,
    /// Base URL of the member's Raft listener.
    pub raft_addr: String,
}

impl From<MemberInfo> for MemberView {
    fn from(m: MemberInfo) -> Self {
        MemberView {
            id: m.id,
            role: if m.voter { "voter" } else { "learner" }.into(),
            api_addr: m.addr.api_addr,
            raft_addr: m.addr.raft_addr,
        }
    }
}

#[derive(Debug, Clone, Object)]
pub struct MembersResponse {
    /// The leader this node knows of.
    #[oai(nullable)]
    pub leader_id: Option<u64>,
    /// The members as this node knows them; right after a change made through a
    /// follower, the follower's view may trail the leader's for a moment.
    pub members: Vec<MemberView>,
}

#[derive(Debug, Clone, Object, Deserialize)]
#[oai(example)]
pub struct AddLearnerRequest {
    /// A new node id: never used before in this cluster.
    pub id: u64,
    /// Base URL of the new node's client API.
    pub api_addr: String,
    /// Base URL of the new node's Raft listener.
    pub raft_addr: String,
}

impl Example for AddLearnerRequest {
    fn example() -> Self {
        AddLearnerRequest {
            id: 4,
            api_addr: "http://127.0.0.1:8084".into(),
            raft_addr: "http://127.0.0.1:9004".into(),
        }
    }
}

#[derive(Debug, Clone, Object, Deserialize)]
pub struct PromoteRequest {
    /// Learners to make voters.
    pub ids: Vec<u64>,
}

#[derive(Debug, Clone, Object, Deserialize)]
pub struct TransferLeaderRequest {
    /// The voter that should lead.
    pub id: u64,
}

#[derive(ApiResponse)]
pub enum MembersResult {
    /// The membership after the operation, as this node sees it.
    #[oai(status = 200)]
    Ok(Json<MembersResponse>),
}

pub struct ClusterApi {
    pub node: RaftNode,
}

impl ClusterApi {
    fn members(&self) -> MembersResult {
        MembersResult::Ok(Json(MembersResponse {
            leader_id: self.node.metrics().current_leader,
            members: self.node.members().into_iter().map(Into::into).collect(),
        }))
    }
}

fn check_base_url(field: &str, url: &str) -> Result<String, ApiError> {
    let url = url.trim().trim_end_matches('/');
    let ok = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
    if ok {
        Ok(url.to_string())
    } else {
        Err(ApiError::InvalidMembership(format!(
            "`{field}` must be a base URL like http://10.0.0.4:9004, got `{url}`"
        )))
    }
}

/// Refuses a new learner whose addresses an existing member (under another id) already
/// uses: the leader would then replicate to itself or to another member as if it were
/// the new node, which wedges the cluster (a single node adding itself stops its Raft).
/// URLs are compared as written, up to case and a trailing `/`.
fn check_addresses_unused(
    members: &[MemberInfo],
    id: u64,
    node: &NodeAddr,
) -> Result<(), ApiError> {
    let same = |a: &str, b: &str| a.trim_end_matches('/').eq_ignore_ascii_case(b);
    for m in members.iter().filter(|m| m.id != id) {
        for (field, given, theirs) in [
            ("api_addr", &node.api_addr, &m.addr.api_addr),
            ("raft_addr", &node.raft_addr, &m.addr.raft_addr),
        ] {
            if same(theirs, given) {
                return Err(ApiError::InvalidMembership(format!(
                    "`{field}` {given} is already used by node {}",
                    m.id
                )));
            }
        }
    }
    Ok(())
}

#[OpenApi(tag = "ApiTags::Cluster")]
impl ClusterApi {
    /// List members
    ///
    /// Every member with its role and addresses, and the leader this node knows of.
    ///
    /// With `auth.tokens` set, needs a token with the `admin` role.
    #[oai(
        path = "/cluster/members",
        method = "get",
        operation_id = "list_members"
    )]
    async fn list(
        &self,
        _auth: ClientAuth,
        /// The cluster secret, when `cluster.secret` is set.
        #[oai(name = "x-kvstore-secret")]
        _secret: ClusterSecret,
    ) -> Result<MembersResult, RouteError<ClusterList>> {
        Ok(self.members())
    }

    /// Add a learner
    ///
    /// Adds a running, empty node as a non-voting member and returns once it has
    /// caught up with the leader's log (or the request timeout passes). Ids of removed
    /// nodes are never accepted again.
    ///
    /// With `auth.tokens` set, needs a token with the `admin` role.
    #[oai(
        path = "/cluster/learners",
        method = "post",
        operation_id = "add_learner"
    )]
    async fn add_learner(
        &self,
        _auth: ClientAuth,
        /// The cluster secret, when `cluster.secret` is set.
        #[oai(name = "x-kvstore-secret")]
        _secret: ClusterSecret,
        body: JsonBody<AddLearnerRequest>,
    ) -> Result<MembersResult, RouteError<ClusterChange>> {
        let req = body.0;
        if req.id == 0 {
            return Err(ApiError::InvalidMembership("node ids start at 1".into()).into());
        }
        let node = NodeAddr {
            api_addr: check_base_url("api_addr", &req.api_addr)?,
            raft_addr: check_base_url("raft_addr", &req.raft_addr)?,
        };
        check_addresses_unused(&self.node.members(), req.id, &node)?;
        self.node
            .admin(AdminOp::AddLearner { id: req.id, node })
            .await?;
        Ok(self.members())
    }

    /// Promote learners to voters
    ///
    /// With `auth.tokens` set, needs a token with the `admin` role.
    #[oai(
        path = "/cluster/voters",
        method = "post",
        operation_id = "promote_voters"
    )]
    async fn promote(
        &self,
        _auth: ClientAuth,
        /// The cluster secret, when `cluster.secret` is set.
        #[oai(name = "x-kvstore-secret")]
        _secret: ClusterSecret,
        body: JsonBody<PromoteRequest>,
    ) -> Result<MembersResult, RouteError<ClusterChange>> {
        let ids: BTreeSet<u64> = body.0.ids.into_iter().collect();
        if ids.is_empty() {
            return Err(
                ApiError::InvalidMembership("`ids` must name at least one learner".into()).into(),
            );
        }
        self.node.admin(AdminOp::Promote { ids }).await?;
        Ok(self.members())
    }

    /// Remove a member
    ///
    /// Removes a voter or learner. Its id is retired and cannot be added again.
    ///
    /// With `auth.tokens` set, needs a token with the `admin` role.
    #[oai(
        path = "/cluster/members/:id",
        method = "delete",
        operation_id = "remove_member"
    )]
    async fn remove(
        &self,
        _auth: ClientAuth,
        /// The cluster secret, when `cluster.secret` is set.
        #[oai(name = "x-kvstore-secret")]
        _secret: ClusterSecret,
        /// The member's node id.
        id: Path<u64>,
    ) -> Result<MembersResult, RouteError<ClusterRemove>> {
        let ids = BTreeSet::from([id.0]);
        self.node.admin(AdminOp::Remove { ids }).await?;
        Ok(self.members())
    }

    /// Transfer leadership
    ///
    /// Asks the leader to hand leadership to another voter. Returns once the request
    /// is made; watch `/status` for the new leader. Naming the current leader changes
    /// nothing.
    ///
    /// With `auth.tokens` set, needs a token with the `admin` role.
    #[oai(
        path = "/cluster/leader",
        method = "post",
        operation_id = "transfer_leader"
    )]
    async fn transfer(
        &self,
        _auth: ClientAuth,
        /// The cluster secret, when `cluster.secret` is set.
        #[oai(name = "x-kvstore-secret")]
        _secret: ClusterSecret,
        body: JsonBody<TransferLeaderRequest>,
    ) -> Result<MembersResult, RouteError<ClusterChange>> {
        let to = body.0.id;
        // A transfer to the node that already leads never completes, and until it does
        // the leader serves no reads or writes. Leadership is already where it is wanted,
        // so this is a no-op.
        if self.node.metrics().current_leader == Some(to) {
            return Ok(self.members());
        }
        self.node.admin(AdminOp::TransferLeader { to }).await?;
        Ok(self.members())
    }
}
