//! The Raft wiring: the peer network, the RPC routes, and node start-up (opening
//! storage, building the `Raft` handle, first-start bootstrap). The openraft type
//! configuration is in [`crate::types`], below storage; it is re-exported here.

mod batch;
mod gauges;
mod network;
mod node;
mod pre_vote;
pub mod rpc;
mod rpc_server;

pub use gauges::{sample_storage, watch_raft};
pub use network::PeerNetwork;
pub use node::{
    start, Cause, Consistency, FollowerProgress, LeaseInfo, MemberInfo, NodeError, RaftNode,
    WeakRaftNode,
};
pub use rpc_server::rpc_app;

pub use crate::types::{typ, NodeAddr, TypeConfig};
