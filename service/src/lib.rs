//! kvstore: a distributed, strongly consistent key-value store on Raft.
//!
//! - [`types`] is the ground floor: the openraft type configuration and the types
//!   every layer shares; it imports nothing else of the crate.
//! - [`admission`] bounds the bytes of writes in flight.
//! - [`background`] starts the node's background tasks and stops them at shutdown.
//! - [`cpu`] runs heavy encoding and decoding without stalling other tasks.
//! - [`config`] holds the settings from YAML and `KV_*` variables.
//! - [`probe`] is `kvstore health`, the probe container health checks run.
//! - [`join`] is `kvstore join`, which adds a node that starts after the first to its
//!   cluster (a StatefulSet's later pods).
//! - [`error`] is the JSON error answer both HTTP listeners give.
//! - [`secret`] compares secrets in constant time.
//! - [`api`] is the HTTP API (poem-openapi), Swagger UI and the OpenAPI spec.
//! - [`raft`] is the openraft wiring and the running node.
//! - [`store`] is the storage contract and its backends.
//! - [`startup`] binds the listener and serves until shutdown.
//! - [`telemetry`] sets up logging.

pub mod admission;
pub mod api;
pub mod background;
pub mod config;
pub mod cpu;
pub mod error;
pub mod join;
pub mod probe;
pub mod raft;
pub mod secret;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod types;
