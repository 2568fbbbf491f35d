//! kvstore: a distributed, strongly consistent key-value store on Raft.
//!
//! - [`config`]: settings from YAML and `KV_*` variables.
//! - [`api`]: the HTTP API (poem-openapi), Swagger UI and the OpenAPI spec.
//! - [`raft`]: the openraft wiring and the running node.
//! - [`store`]: the storage contract and its backends.
//! - [`startup`]: binding the listener and serving until shutdown.
//! - [`telemetry`]: logging.

pub mod api;
pub mod config;
pub mod raft;
pub mod startup;
pub mod store;
pub mod telemetry;
