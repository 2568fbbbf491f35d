//! The settings' shape: one struct per section of the YAML file, with what each
//! setting means. How a setting may be written (durations, member lists, tokens) is in
//! `parse.rs`; the rules across settings are in `validate.rs`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::parse::{client_tokens, duration, members};

/// The whole node configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub storage: StorageSettings,
    pub database: DatabaseSettings,
    pub raft: RaftSettings,
    pub cluster: ClusterSettings,
    pub auth: AuthSettings,
    pub logging: LoggingSettings,
    pub telemetry: TelemetrySettings,
    pub tls: TlsSettings,
}

/// The client-facing HTTP listener and request limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    /// 0 lets the OS pick a free port (used by tests); the bound port is logged.
    pub port: u16,
    /// How long in-flight requests may run after SIGINT/SIGTERM before the node stops.
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Upper bound for one client request, including a Raft commit or read barrier.
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Client requests served at once; beyond it a request gets 503 `OVERLOADED` with
    /// `Retry-After` at once instead of waiting in a queue. `/health`, `/ready` and
    /// `/metrics` are not counted.
    pub max_in_flight: usize,
    /// Bytes of write request bodies a node serves at once (charged by their declared
    /// length, before they are read), and bytes of keys and values the leader has in
    /// Raft at once, from every node; beyond it a write gets 503 `OVERLOADED` with
    /// `Retry-After` at once. Bounds memory and the time a burst of large values takes
    /// to replicate, which a count of requests cannot.
    pub max_in_flight_bytes: usize,
}

/// The largest `server.max_value_bytes` accepted: one write must always fit one
/// node-to-node message (see `raft::rpc::MAX_FRAME`). etcd suggests at most 10 MiB per
/// request; Consul takes 512 KiB per value.
pub const MAX_VALUE_BYTES_CEILING: usize = 8 << 20;
/// The largest `server.max_key_bytes` accepted, for the same reason.
pub const MAX_KEY_BYTES_CEILING: usize = 64 << 10;

/// Which backend keeps the Raft log and the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum StorageType {
    /// The embedded redb file under `storage.data_dir`.
    File,
    /// PostgreSQL, configured by the `database` section.
    Database,
}

impl TryFrom<String> for StorageType {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "file" => Ok(StorageType::File),
            "database" => Ok(StorageType::Database),
            other => Err(format!(
                "unknown storage type `{other}` (use `file` or `database`)"
            )),
        }
    }
}

impl StorageType {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageType::File => "file",
            StorageType::Database => "database",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    #[serde(rename = "type")]
    pub kind: StorageType,
    pub data_dir: PathBuf,
    /// fsync every Raft log append and vote before acknowledging it. Turning it off trades
    /// durability across crashes for write throughput.
    pub sync_writes: bool,
    /// Past this many bytes of stored data new values are refused (507 `NO_SPACE`);
    /// reads and deletes go on. 0: no quota. etcd's default backend quota is the same.
    pub quota_bytes: u64,
    /// Below this much free space on the file system of `data_dir`, new values are
    /// refused likewise. 0: no floor.
    pub min_free_bytes: u64,
}

/// The PostgreSQL connection, used by the `database` storage type.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub username: String,
    pub password: String,
    pub max_conns: u32,
    pub min_conns: u32,
    /// disable, allow, prefer, require, verify-ca or verify-full.
    pub ssl_mode: String,
    /// CA certificate (PEM) to verify the server with, for verify-ca and verify-full.
    pub ssl_root_cert: Option<PathBuf>,
    /// Connections are closed and replaced after this long.
    #[serde(deserialize_with = "duration")]
    pub max_conn_time: Duration,
    /// Idle connections beyond `min_conns` are closed after this long.
    #[serde(deserialize_with = "duration")]
    pub max_idle_time: Duration,
}

impl std::fmt::Debug for DatabaseSettings {
    // Hand-written so that the password can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("max_conns", &self.max_conns)
            .field("min_conns", &self.min_conns)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("max_conn_time", &self.max_conn_time)
            .field("max_idle_time", &self.max_idle_time)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftSettings {
    /// This node's id in the cluster; stable across restarts.
    pub node_id: u64,
    /// Minimum election timeout; the maximum is twice this.
    #[serde(deserialize_with = "duration")]
    pub election_timeout: Duration,
    /// Interval between leader heartbeats (the documented name, kept for existing
    /// configuration files).
    #[serde(deserialize_with = "duration")]
    pub heartbeat_timeout: Duration,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_interval: u64,
    /// Log entries kept behind a snapshot, so slightly lagging followers catch up from the
    /// log instead of a full snapshot.
    pub snapshot_logs_to_keep: u64,
    /// Run a Pre-Vote round (Raft dissertation, section 9.6) before an election: a node
    /// asks whether a majority would vote for it before it raises its term, so a node
    /// coming back from a partition cannot depose a healthy leader. On by default, as in
    /// etcd since 3.4.
    pub pre_vote: bool,
}

/// How this node meets its peers.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// Address the Raft RPC listener binds (node-to-node traffic).
    pub raft_host: String,
    /// Port of the Raft RPC listener; 0 picks a free port.
    pub raft_port: u16,
    /// Base URL of this node's client API as others reach it. Empty: derived from the
    /// bound address (a wildcard address is advertised as loopback).
    pub advertise_api: String,
    /// Base URL of this node's Raft listener as peers reach it. Empty: derived likewise.
    pub advertise_raft: String,
    /// The voters of a brand-new cluster, read on the very first start only. Empty: this
    /// node alone. Every node of a new cluster lists the same members.
    #[serde(deserialize_with = "members")]
    pub initial_members: Vec<Member>,
    /// Whether a node with empty storage initialises a new cluster. `false` for a node
    /// that will join an existing cluster through `POST /cluster/learners`.
    pub bootstrap: bool,
    /// Shared secret for Raft RPC and the membership routes. Empty: no check.
    pub secret: String,
    /// Allows a node of a multi-node cluster to run without `secret`, leaving its Raft
    /// listener and membership routes open to anyone who can reach them. Off, such a
    /// node refuses to start: an open Raft port lets anyone rewrite the cluster's data.
    pub insecure: bool,
}

impl std::fmt::Debug for ClusterSettings {
    // Hand-written so that the secret can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("raft_host", &self.raft_host)
            .field("raft_port", &self.raft_port)
            .field("advertise_api", &self.advertise_api)
            .field("advertise_raft", &self.advertise_raft)
            .field("initial_members", &self.initial_members)
            .field("bootstrap", &self.bootstrap)
            .field("insecure", &self.insecure)
            .field(
                "secret",
                &if self.secret.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

/// One member of a cluster: its id and where its two listeners are reached.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: u64,
    pub api_addr: String,
    pub raft_addr: String,
}

/// Client authentication. With no tokens (the default) every client request is served
/// without one; with tokens, every route but the probes, `/metrics` and the docs needs
/// `Authorization: Bearer <token>` with a role that allows it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The accepted tokens and their roles: a YAML list of `{token, role}`, or, for the
    /// environment variable, `TOKEN:ROLE,TOKEN:ROLE`.
    #[serde(deserialize_with = "client_tokens")]
    pub tokens: Vec<ClientToken>,
}

impl AuthSettings {
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }
}

/// One accepted bearer token and what it may do.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientToken {
    pub token: String,
    pub role: Role,
}

impl std::fmt::Debug for ClientToken {
    // Hand-written so that a token can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientToken")
            .field("token", &"<redacted>")
            .field("role", &self.role)
            .finish()
    }
}

/// What a client token may do. Each role includes the ones before it:
/// `read` < `write` < `admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// `GET /kv/{key}` and `/status`.
    Read,
    /// Also `PUT` and `DELETE /kv/{key}`.
    Write,
    /// Also the `/cluster` routes.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role `{other}` (use read, write or admin)")),
        }
    }
}

/// Trace export. Off unless an OTLP endpoint is set, here or in the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT` variable; `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`
/// and `OTEL_TRACES_SAMPLER_ARG` are honoured too.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// OTLP endpoint, e.g. `http://tempo:4317` (gRPC, the default) or `http://tempo:4318`
    /// with `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`. Empty: the environment decides.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans (`OTEL_SERVICE_NAME` wins).
    pub service_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LogFormat {
    Json,
    Text,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            other => Err(format!(
                "unknown log format `{other}` (use `json` or `text`)"
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSettings {
    /// A tracing filter: `debug`, `info`, `warn`, `error`, or directives like
    /// `info,openraft=debug`. openraft's own messages stay at `warn` unless it is named.
    pub level: String,
    pub format: LogFormat,
    /// When set, logs are appended to this file instead of stdout, and SIGHUP reopens
    /// it (for logrotate).
    pub file: Option<PathBuf>,
    /// One line per client request (method, path, route, status, latency). Off by
    /// default: at thousands of requests a second it is most of what a node writes.
    pub access_log: bool,
    /// Requests slower than this are logged at `warn`, access log or not; `0` turns
    /// these lines off.
    #[serde(deserialize_with = "duration")]
    pub slow_request_threshold: Duration,
    /// Lines waiting for the writer thread. Beyond it new lines are dropped (and
    /// counted) rather than making requests wait for the disk or a stdout reader.
    pub buffer_lines: usize,
}

/// TLS for both listeners (client API and Raft) and for the node's own calls to its
/// peers. Off unless `cert_file` and `key_file` are set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// This node's certificate chain (PEM), served on both listeners.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// The CA certificates (PEM) peers' certificates must chain to. Needed for a
    /// cluster over TLS; without it a node trusts no peer.
    pub ca_file: Option<PathBuf>,
    /// Mutual TLS between nodes: the Raft listener accepts only clients presenting a
    /// certificate from `ca_file`, and this node presents its own to its peers.
    pub peer_mtls: bool,
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}
