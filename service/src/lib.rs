//! kvstore: a distributed, strongly consistent key-value store on Raft.
//!
//! - [`config`] holds the settings from YAML and `KV_*` variables.
//! - [`api`] is the HTTP API (poem-openapi), Swagger UI and the OpenAPI spec.
//! - [`raft`] is the openraft wiring and the running node.
//! - [`store`] is the storage contract and its backends.
//! - [`startup`] binds the listener and serves until shutdown.
//! - [`telemetry`] sets up logging.

pub mod api;
pub mod config;
pub mod raft;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
