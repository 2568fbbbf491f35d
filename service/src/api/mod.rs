//! The client-facing HTTP API: routes, the OpenAPI spec and Swagger UI, and the
//! middleware every request passes through (key paths, access log, JSON errors, load
//! shedding, client authentication; in `middleware.rs`). Bearer tokens are in
//! `auth.rs`, the cluster secret in `cluster_secret.rs`, and the statuses each route
//! can answer, as its spec shows them, in `route_error.rs`.

mod auth;
mod body;
mod cluster;
mod cluster_secret;
mod kv;
mod leases;
mod list;
mod middleware;
mod node_error;
mod request_log;
mod route_error;
mod system;
mod txn;

use std::sync::Arc;
use std::time::Duration;

use poem::{Endpoint, EndpointExt, Response, Route};
use poem_openapi::{OpenApiService, Tags};
use tokio::sync::Semaphore;

pub use self::auth::Auth;
use self::body::BodyRules;
use self::cluster_secret::ExpectedSecret;
use self::middleware::{AllowedMethods, LoadShedding};
pub use self::request_log::RequestLog;
use crate::admission::ByteBudget;
pub use crate::error;
use crate::raft::RaftNode;

/// Request limits, from the `server` settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Bounds reading a request body, like it bounds the Raft work behind a request.
    pub request_timeout: Duration,
    /// Client requests served at once (`server.max_in_flight`).
    pub max_in_flight: usize,
    /// Bytes of write bodies served at once (`server.max_in_flight_bytes`).
    pub max_in_flight_bytes: usize,
}

#[derive(Tags)]
enum ApiTags {
    /// Store, read and delete keys; list and delete ranges of keys.
    Kv,
    /// Leases: keys that expire with their owner.
    Leases,
    /// Liveness, readiness and node status.
    System,
    /// Cluster membership: list, add, promote, remove, transfer leadership.
    Cluster,
}

/// Builds the OpenAPI service describing every route.
fn openapi(
    node: &RaftNode,
    limits: Limits,
) -> OpenApiService<
    (
        kv::KvApi,
        list::ListApi,
        txn::TxnApi,
        leases::LeaseApi,
        system::SystemApi,
        cluster::ClusterApi,
    ),
    (),
> {
    OpenApiService::new(
        (
            kv::KvApi {
                node: node.clone(),
                limits,
            },
            list::ListApi { node: node.clone() },
            txn::TxnApi {
                node: node.clone(),
                limits,
            },
            leases::LeaseApi { node: node.clone() },
            system::SystemApi { node: node.clone() },
            cluster::ClusterApi { node: node.clone() },
        ),
        "kvstore",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "A distributed, strongly consistent key-value store on Raft. Every write goes \
         through the Raft log; reads are linearizable unless `consistency=stale` is asked \
         for. Every error is JSON with a stable `code`.",
    )
}

/// The whole HTTP application: API routes, `/docs` (Swagger UI), `/openapi.json` and
/// `/openapi.yaml`, with the bearer tokens of `auth` (none: authentication is off),
/// logging requests as `request_log` says.
pub fn app(
    node: RaftNode,
    limits: Limits,
    secret: String,
    auth: Auth,
    request_log: Arc<RequestLog>,
) -> impl Endpoint<Output = Response> {
    if auth.enabled() {
        tracing::info!(
            tokens = auth.token_count(),
            "client authentication is on: requests need a bearer token"
        );
    }
    let node_id = node.id();
    let service = openapi(&node, limits);
    let docs = service.swagger_ui();
    let spec_json = service.spec_endpoint();
    let spec_yaml = service.spec_endpoint_yaml();
    let allowed = Arc::new(AllowedMethods::from_spec(&service.spec()));
    let body_rules = BodyRules::new(limits.max_value_bytes, limits.request_timeout);
    let shedding = Arc::new(LoadShedding {
        in_flight: Semaphore::new(limits.max_in_flight),
        write_bytes: ByteBudget::new(limits.max_in_flight_bytes),
        limits,
        body_rules,
    });
    Route::new()
        .nest("/docs", docs)
        .at("/openapi.json", spec_json)
        .at("/openapi.yaml", spec_yaml)
        .nest("/", service)
        .data(body_rules)
        .data(ExpectedSecret::new(&secret))
        .around(move |ep, req| middleware::json_errors(ep, req, allowed.clone()))
        .around(middleware::route_key_paths)
        .around(move |ep, req| middleware::shed_load(ep, req, shedding.clone()))
        // Client authentication, before routing so that it covers every route. Inside
        // the layer below, so refusals are counted and logged like any other answer
        // (the log line has method, path and status, never a header). Outside load
        // shedding: checking a token is cheap and needs no slot, so requests without a
        // valid token never take one from real clients, and they learn nothing about
        // the node's load.
        .around(move |ep, req| middleware::authenticate(ep, req, auth.clone()))
        .around(move |ep, req| middleware::observe(ep, req, node_id, request_log.clone()))
}
