//! `/leases`: grant, keep alive, revoke and read leases. Keys attached to a lease
//! (`PUT /kv/{key}` with `"lease"`) are deleted when it is revoked or expires. Every
//! change goes through the Raft log; the leader decides expiry and commits it through
//! the log too, so every node deletes the same keys at the same revision.

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;

use super::auth::ClientAuth;
use super::body::JsonBody;
use super::error::ApiError;
use super::kv::{check_ttl, ReadConsistency};
use super::route_error::{LeaseChange, LeaseGet, LeaseGrant, RouteError};
use super::ApiTags;
use crate::raft::{NodeError, RaftNode};
use crate::store::{Command, CommandResult};
use crate::telemetry::metrics;

/// How many of a lease's keys `GET /leases/{id}` lists.
pub const MAX_LEASE_KEYS: usize = 1000;

/// The body of `POST /leases`.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(example)]
pub struct GrantRequest {
    /// 1 to 31536000 (a year). The lease expires this long after it was granted or
    /// last kept alive, unless kept alive again.
    pub ttl_seconds: u64,
}

impl Example for GrantRequest {
    fn example() -> Self {
        GrantRequest { ttl_seconds: 10 }
    }
}

/// A lease granted or kept alive.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct LeaseResponse {
    /// The lease's id: name it in `PUT /kv/{key}` as `"lease"`.
    pub id: u64,
    pub ttl_seconds: u64,
    /// The node that served the request.
    pub node_id: u64,
}

impl Example for LeaseResponse {
    fn example() -> Self {
        LeaseResponse {
            id: 42,
            ttl_seconds: 10,
            node_id: 1,
        }
    }
}

/// A lease revoked.
#[derive(Debug, Clone, Object)]
pub struct RevokeResponse {
    pub id: u64,
    /// Keys deleted with it.
    pub deleted_keys: u64,
    /// The node that served the request.
    pub node_id: u64,
}

/// A lease as it is.
#[derive(Debug, Clone, Object)]
pub struct LeaseInfoResponse {
    pub id: u64,
    pub ttl_seconds: u64,
    /// Milliseconds left before it expires, as the serving node counts them from the
    /// last grant or keepalive it applied (absent if that node has not applied it
    /// yet); the leader's count decides.
    #[oai(skip_serializing_if_is_none)]
    pub remaining_ms: Option<u64>,
    /// Its keys in key order, the first 1000.
    pub keys: Vec<String>,
    /// The node that served the request.
    pub node_id: u64,
}

#[derive(ApiResponse)]
pub enum GrantResult {
    /// The lease was granted through Raft.
    #[oai(status = 201)]
    Created(Json<LeaseResponse>),
}

#[derive(ApiResponse)]
pub enum KeepAliveResult {
    /// The lease's TTL starts again.
    #[oai(status = 200)]
    Ok(Json<LeaseResponse>),
}

#[derive(ApiResponse)]
pub enum RevokeResult {
    /// The lease and its keys are gone.
    #[oai(status = 200)]
    Ok(Json<RevokeResponse>),
}

#[derive(ApiResponse)]
pub enum LeaseInfoResult {
    #[oai(status = 200)]
    Ok(Json<LeaseInfoResponse>),
}

pub struct LeaseApi {
    pub node: RaftNode,
}

#[OpenApi(tag = "ApiTags::Leases")]
impl LeaseApi {
    /// Grant a lease
    ///
    /// Grants a lease of `ttl_seconds`; attach keys to it with `PUT /kv/{key}` and
    /// `"lease": id`. It expires `ttl_seconds` after it was granted or last kept alive:
    /// the leader then deletes its keys through the Raft log. After a change of leader,
    /// no lease expires within an election timeout, so that keepalives can find the new
    /// leader; a lease is never expired early.
    ///
    /// With `auth.tokens` set, needs a token with the `write` role.
    #[oai(path = "/leases", method = "post", operation_id = "grant_lease")]
    async fn grant(
        &self,
        _auth: ClientAuth,
        body: JsonBody<GrantRequest>,
    ) -> Result<GrantResult, RouteError<LeaseGrant>> {
        check_ttl(body.0.ttl_seconds)?;
        let command = Command::LeaseGrant {
            ttl_seconds: body.0.ttl_seconds,
        };
        match self.node.submit(command).await? {
            CommandResult::Lease { lease } => {
                ::metrics::counter!(metrics::LEASES_GRANTED).increment(1);
                Ok(GrantResult::Created(Json(LeaseResponse {
                    id: lease.id,
                    ttl_seconds: lease.ttl_seconds,
                    node_id: self.node.id(),
                })))
            }
            other => Err(unexpected(other).into()),
        }
    }

    /// Keep a lease alive
    ///
    /// Starts the lease's TTL again. Send it well within the TTL (a third of it is
    /// usual): a keepalive that arrives after the lease expired answers 404
    /// `LEASE_NOT_FOUND`, and its keys are gone.
    ///
    /// With `auth.tokens` set, needs a token with the `write` role.
    #[oai(
        path = "/leases/:id/keepalive",
        method = "post",
        operation_id = "keep_lease_alive"
    )]
    async fn keepalive(
        &self,
        _auth: ClientAuth,
        /// The lease's id.
        id: Path<u64>,
    ) -> Result<KeepAliveResult, RouteError<LeaseChange>> {
        match self
            .node
            .submit(Command::LeaseKeepAlive { id: id.0 })
            .await?
        {
            CommandResult::Lease { lease } => Ok(KeepAliveResult::Ok(Json(LeaseResponse {
                id: lease.id,
                ttl_seconds: lease.ttl_seconds,
                node_id: self.node.id(),
            }))),
            CommandResult::LeaseNotFound { id } => Err(ApiError::LeaseNotFound(id).into()),
            other => Err(unexpected(other).into()),
        }
    }

    /// Revoke a lease
    ///
    /// Revokes the lease and deletes every key attached to it, in one Raft log entry.
    ///
    /// With `auth.tokens` set, needs a token with the `write` role.
    #[oai(path = "/leases/:id", method = "delete", operation_id = "revoke_lease")]
    async fn revoke(
        &self,
        _auth: ClientAuth,
        /// The lease's id.
        id: Path<u64>,
    ) -> Result<RevokeResult, RouteError<LeaseChange>> {
        match self.node.submit(Command::LeaseRevoke { id: id.0 }).await? {
            CommandResult::LeaseRevoked { id, deleted } => {
                Ok(RevokeResult::Ok(Json(RevokeResponse {
                    id,
                    deleted_keys: deleted,
                    node_id: self.node.id(),
                })))
            }
            CommandResult::LeaseNotFound { id } => Err(ApiError::LeaseNotFound(id).into()),
            other => Err(unexpected(other).into()),
        }
    }

    /// Read a lease
    ///
    /// The lease's TTL, the time it has left, and its keys. Linearizable by default, as
    /// `GET /kv/{key}`; `consistency=stale` reads this node's copy.
    ///
    /// With `auth.tokens` set, needs a token with the `read` role.
    #[oai(path = "/leases/:id", method = "get", operation_id = "get_lease")]
    async fn get(
        &self,
        _auth: ClientAuth,
        /// The lease's id.
        id: Path<u64>,
        /// `linearizable` (default) or `stale`.
        #[oai(default)]
        consistency: Query<ReadConsistency>,
    ) -> Result<LeaseInfoResult, RouteError<LeaseGet>> {
        let info = self
            .node
            .lease(id.0, MAX_LEASE_KEYS, consistency.0.into())
            .await?
            .ok_or(ApiError::LeaseNotFound(id.0))?;
        Ok(LeaseInfoResult::Ok(Json(LeaseInfoResponse {
            id: info.lease.id,
            ttl_seconds: info.lease.ttl_seconds,
            remaining_ms: info.remaining.map(|d| d.as_millis() as u64),
            keys: info.keys,
            node_id: self.node.id(),
        })))
    }
}

fn unexpected(result: CommandResult) -> ApiError {
    ApiError::from(NodeError::Storage(
        format!("unexpected result for a lease command: {result:?}").into(),
    ))
}
