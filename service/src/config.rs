//! Node configuration: built-in defaults, then an optional YAML file, then `KV_*`
//! environment variables, in that order of precedence (last wins).
//!
//! The section and key names (`server`, `storage`, `database`, `raft`, `logging`) and
//! the environment variables (`KV_DB_HOST`, `KV_LOG_LEVEL`, ...) are a contract with
//! existing deployments (README, "Configuration") and every other setting has a `KV_` override
//! listed in [`ENV_OVERRIDES`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Every environment variable the node reads, and the setting it overrides.
///
/// An explicit table rather than a naming rule: the documented names (`KV_DB_NAME` for
/// `database.database`, `KV_LOG_LEVEL` for `logging.level`) do not follow one, and the
/// README's reference table is generated from the same facts.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("KV_SERVER_HOST", "server.host"),
    ("KV_SERVER_PORT", "server.port"),
    ("KV_SERVER_SHUTDOWN_TIMEOUT", "server.shutdown_timeout"),
    ("KV_SERVER_REQUEST_TIMEOUT", "server.request_timeout"),
    ("KV_SERVER_MAX_KEY_BYTES", "server.max_key_bytes"),
    ("KV_SERVER_MAX_VALUE_BYTES", "server.max_value_bytes"),
    ("KV_SERVER_MAX_IN_FLIGHT", "server.max_in_flight"),
    (
        "KV_SERVER_MAX_IN_FLIGHT_BYTES",
        "server.max_in_flight_bytes",
    ),
    ("KV_STORAGE_TYPE", "storage.type"),
    ("KV_STORAGE_DATA_DIR", "storage.data_dir"),
    ("KV_STORAGE_SYNC_WRITES", "storage.sync_writes"),
    ("KV_STORAGE_QUOTA_BYTES", "storage.quota_bytes"),
    ("KV_STORAGE_MIN_FREE_BYTES", "storage.min_free_bytes"),
    ("KV_DB_HOST", "database.host"),
    ("KV_DB_PORT", "database.port"),
    ("KV_DB_NAME", "database.database"),
    ("KV_DB_USER", "database.username"),
    ("KV_DB_PASSWORD", "database.password"),
    ("KV_DB_MAX_CONNS", "database.max_conns"),
    ("KV_DB_MIN_CONNS", "database.min_conns"),
    ("KV_DB_SSL_MODE", "database.ssl_mode"),
    ("KV_DB_SSL_ROOT_CERT", "database.ssl_root_cert"),
    ("KV_DB_MAX_CONN_TIME", "database.max_conn_time"),
    ("KV_DB_MAX_IDLE_TIME", "database.max_idle_time"),
    ("KV_RAFT_NODE_ID", "raft.node_id"),
    ("KV_RAFT_ELECTION_TIMEOUT", "raft.election_timeout"),
    ("KV_RAFT_HEARTBEAT_TIMEOUT", "raft.heartbeat_timeout"),
    ("KV_RAFT_SNAPSHOT_INTERVAL", "raft.snapshot_interval"),
    (
        "KV_RAFT_SNAPSHOT_LOGS_TO_KEEP",
        "raft.snapshot_logs_to_keep",
    ),
    ("KV_RAFT_PRE_VOTE", "raft.pre_vote"),
    ("KV_CLUSTER_RAFT_HOST", "cluster.raft_host"),
    ("KV_CLUSTER_RAFT_PORT", "cluster.raft_port"),
    ("KV_CLUSTER_ADVERTISE_API", "cluster.advertise_api"),
    ("KV_CLUSTER_ADVERTISE_RAFT", "cluster.advertise_raft"),
    ("KV_CLUSTER_INITIAL_MEMBERS", "cluster.initial_members"),
    ("KV_CLUSTER_BOOTSTRAP", "cluster.bootstrap"),
    ("KV_CLUSTER_SECRET", "cluster.secret"),
    ("KV_CLUSTER_INSECURE", "cluster.insecure"),
    ("KV_AUTH_TOKENS", "auth.tokens"),
    ("KV_LOG_LEVEL", "logging.level"),
    ("KV_LOG_FORMAT", "logging.format"),
    ("KV_LOG_FILE", "logging.file"),
    ("KV_LOG_ACCESS_LOG", "logging.access_log"),
    (
        "KV_LOG_SLOW_REQUEST_THRESHOLD",
        "logging.slow_request_threshold",
    ),
    ("KV_LOG_BUFFER_LINES", "logging.buffer_lines"),
    ("KV_TELEMETRY_OTLP_ENDPOINT", "telemetry.otlp_endpoint"),
    ("KV_TELEMETRY_SERVICE_NAME", "telemetry.service_name"),
    ("KV_TLS_CERT_FILE", "tls.cert_file"),
    ("KV_TLS_KEY_FILE", "tls.key_file"),
    ("KV_TLS_CA_FILE", "tls.ca_file"),
    ("KV_TLS_PEER_MTLS", "tls.peer_mtls"),
];

/// The documented names of the `logging` section's variables are `KV_LOG_*`; each may
/// also be spelled after the section, `KV_LOGGING_*` (`KV_LOGGING_ACCESS_LOG` for
/// `KV_LOG_ACCESS_LOG`), since that is the name a reader of the YAML keys would guess
/// first.
const LOG_PREFIX: &str = "KV_LOG_";
const LOGGING_PREFIX: &str = "KV_LOGGING_";

/// The value of `var` from `env`, or of its `KV_LOGGING_*` spelling. Both set to
/// different values is an error naming both, rather than a silent choice.
fn env_value(
    env: &impl Fn(&str) -> Option<String>,
    var: &str,
    key: &'static str,
) -> Result<Option<String>, ConfigError> {
    let value = env(var);
    let Some(rest) = var.strip_prefix(LOG_PREFIX) else {
        return Ok(value);
    };
    let alias = format!("{LOGGING_PREFIX}{rest}");
    match (value, env(&alias)) {
        (Some(a), Some(b)) if a != b => Err(ConfigError::invalid(
            key,
            format!("{var} and {alias} are both set, to different values"),
        )),
        (value, alias_value) => Ok(value.or(alias_value)),
    }
}

/// A configuration problem, always naming the setting at fault so an operator can fix
/// it without reading the source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid setting `{setting}`: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

impl ConfigError {
    fn invalid(setting: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            setting,
            reason: reason.into(),
        }
    }
}

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

/// Reads `initial_members` as a YAML list of `{id, api_addr, raft_addr}`, or, for
/// environment variables, as text: `1=http://h1:8081|http://h1:9001,2=...`.
fn members<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Member>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<Member>),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::List(list) => Ok(list),
        Raw::Text(text) => parse_members(&text).map_err(serde::de::Error::custom),
    }
}

fn parse_members(text: &str) -> Result<Vec<Member>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let bad = || format!("cannot read member `{item}`: write ID=API_URL|RAFT_URL");
            let (id, addrs) = item.split_once('=').ok_or_else(bad)?;
            let (api, raft) = addrs.split_once('|').ok_or_else(bad)?;
            Ok(Member {
                id: id.trim().parse().map_err(|_| bad())?,
                api_addr: api.trim().to_string(),
                raft_addr: raft.trim().to_string(),
            })
        })
        .collect()
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

/// Reads `auth.tokens` as a YAML list of `{token, role}`, or, for the environment
/// variable, as text: `TOKEN:ROLE,TOKEN:ROLE`. Errors name entries by position and
/// never quote a token.
fn client_tokens<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<ClientToken>, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        token: String,
        role: String,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<Entry>),
        Text(String),
    }
    let entries: Vec<(String, String)> = match Raw::deserialize(deserializer)? {
        Raw::List(list) => list.into_iter().map(|e| (e.token, e.role)).collect(),
        Raw::Text(text) => parse_client_tokens(&text).map_err(serde::de::Error::custom)?,
    };
    entries
        .into_iter()
        .enumerate()
        .map(|(i, (token, role))| {
            let role = role
                .trim()
                .parse()
                .map_err(|e| serde::de::Error::custom(format!("entry {}: {e}", i + 1)))?;
            Ok(ClientToken { token, role })
        })
        .collect()
}

fn parse_client_tokens(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .enumerate()
        .map(|(i, item)| {
            // The role is after the last `:`, so a token may contain `:`.
            let (token, role) = item
                .rsplit_once(':')
                .ok_or_else(|| format!("entry {} is not TOKEN:ROLE", i + 1))?;
            Ok((token.trim().to_string(), role.trim().to_string()))
        })
        .collect()
}

/// Trace export. Off unless an OTLP endpoint is set, here or in the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT` variable; `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`
/// and `OTEL_TRACES_SAMPLER_ARG` are honoured too.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// OTLP/gRPC endpoint, e.g. `http://tempo:4317`. Empty: the environment decides.
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

/// The defaults, as YAML: what a node runs with when no file and no variable says
/// otherwise; the one place they are written. `config/server.yaml` is an annotated
/// example for a single node: it repeats the common ones, not all of them.
const DEFAULTS: &str = r#"
server:
  host: "0.0.0.0"
  port: 8080
  shutdown_timeout: "30s"
  request_timeout: "10s"
  max_key_bytes: 1024
  max_value_bytes: 1048576
  max_in_flight: 1024
  max_in_flight_bytes: 67108864
storage:
  type: "file"
  data_dir: "./data"
  sync_writes: true
  quota_bytes: 2147483648
  min_free_bytes: 268435456
database:
  host: "localhost"
  port: 5432
  database: "kvstore"
  username: "postgres"
  password: ""
  max_conns: 10
  min_conns: 2
  ssl_mode: "prefer"
  ssl_root_cert: null
  max_conn_time: "1h"
  max_idle_time: "10m"
raft:
  node_id: 1
  election_timeout: "1s"
  heartbeat_timeout: "100ms"
  snapshot_interval: 10000
  snapshot_logs_to_keep: 1000
  pre_vote: true
cluster:
  raft_host: "0.0.0.0"
  raft_port: 9001
  advertise_api: ""
  advertise_raft: ""
  initial_members: []
  bootstrap: true
  secret: ""
  insecure: false
auth:
  tokens: []
logging:
  level: "info"
  format: "json"
  file: null
  access_log: false
  slow_request_threshold: "200ms"
  buffer_lines: 16384
telemetry:
  otlp_endpoint: ""
  service_name: "kvstore"
tls:
  cert_file: null
  key_file: null
  ca_file: null
  peer_mtls: false
"#;

impl Settings {
    /// Loads defaults, then `file` if given, then the `KV_*` variables from the process
    /// environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, |name| std::env::var(name).ok())
    }

    /// Like [`Settings::load`], reading variables through `env` (tests pass a map).
    pub fn load_from(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Yaml));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::File {
                    path: path.to_owned(),
                    reason: "no such file".into(),
                });
            }
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Yaml)
                    .required(true),
            );
        }
        for (var, key) in ENV_OVERRIDES {
            if let Some(value) = env_value(&env, var, key)? {
                builder = builder
                    .set_override(*key, value)
                    .map_err(|e| ConfigError::Parse(format!("{var}: {e}")))?;
            }
        }
        let mut settings: Settings = builder
            .build()
            .map_err(|e| match e {
                config::ConfigError::FileParse { uri, cause } => ConfigError::File {
                    path: uri.unwrap_or_default().into(),
                    reason: cause.to_string(),
                },
                other => ConfigError::Parse(other.to_string()),
            })?
            .try_deserialize()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        // An empty path (e.g. `KV_DB_SSL_ROOT_CERT=`) means unset.
        settings.database.ssl_root_cert = settings
            .database
            .ssl_root_cert
            .take()
            .filter(|p| !p.as_os_str().is_empty());
        // An empty TLS path (e.g. `KV_TLS_CA_FILE=`) means unset.
        for path in [
            &mut settings.tls.cert_file,
            &mut settings.tls.key_file,
            &mut settings.tls.ca_file,
        ] {
            *path = path.take().filter(|p| !p.as_os_str().is_empty());
        }
        // An empty `logging.file` (e.g. `KV_LOG_FILE=`) means stdout.
        settings.logging.file = settings
            .logging
            .file
            .take()
            .filter(|p| !p.as_os_str().is_empty());
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the rules serde cannot express. Checks that need the file system (a
    /// writable data dir) happen when the store opens.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.server.host.trim().is_empty() {
            return Err(ConfigError::invalid("server.host", "must not be empty"));
        }
        self.listen_addr()?;
        if self.server.max_key_bytes == 0 {
            return Err(ConfigError::invalid(
                "server.max_key_bytes",
                "must be at least 1",
            ));
        }
        if self.server.max_value_bytes == 0 {
            return Err(ConfigError::invalid(
                "server.max_value_bytes",
                "must be at least 1",
            ));
        }
        if self.server.max_key_bytes > MAX_KEY_BYTES_CEILING {
            return Err(ConfigError::invalid(
                "server.max_key_bytes",
                format!("must be at most {MAX_KEY_BYTES_CEILING} (64 KiB)"),
            ));
        }
        if self.server.max_value_bytes > MAX_VALUE_BYTES_CEILING {
            return Err(ConfigError::invalid(
                "server.max_value_bytes",
                format!(
                    "must be at most {MAX_VALUE_BYTES_CEILING} (8 MiB), so that one write \
                     fits one message between nodes"
                ),
            ));
        }
        let one_write = self.server.max_key_bytes + self.server.max_value_bytes;
        if self.server.max_in_flight_bytes < one_write {
            return Err(ConfigError::invalid(
                "server.max_in_flight_bytes",
                format!(
                    "must be at least server.max_key_bytes + server.max_value_bytes \
                     ({one_write}), or the largest write could never be admitted"
                ),
            ));
        }
        if self.server.max_in_flight == 0 {
            return Err(ConfigError::invalid(
                "server.max_in_flight",
                "must be at least 1",
            ));
        }
        self.validate_tls()?;
        if self.server.request_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "server.request_timeout",
                "must be positive",
            ));
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "storage.data_dir",
                "must not be empty",
            ));
        }
        if self.raft.node_id == 0 {
            return Err(ConfigError::invalid("raft.node_id", "must be at least 1"));
        }
        if self.raft.heartbeat_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "raft.heartbeat_timeout",
                "must be positive",
            ));
        }
        if self.raft.election_timeout <= self.raft.heartbeat_timeout {
            return Err(ConfigError::invalid(
                "raft.election_timeout",
                format!(
                    "must be longer than raft.heartbeat_timeout ({})",
                    humantime::format_duration(self.raft.heartbeat_timeout)
                ),
            ));
        }
        if self.raft.snapshot_interval == 0 {
            return Err(ConfigError::invalid(
                "raft.snapshot_interval",
                "must be at least 1",
            ));
        }
        self.validate_cluster()?;
        self.validate_auth()?;
        const SSL_MODES: [&str; 6] = [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ];
        if !SSL_MODES.contains(&self.database.ssl_mode.as_str()) {
            return Err(ConfigError::invalid(
                "database.ssl_mode",
                format!(
                    "unknown mode `{}` (use one of {})",
                    self.database.ssl_mode,
                    SSL_MODES.join(", ")
                ),
            ));
        }
        if let Some(cert) = &self.database.ssl_root_cert {
            if !cert.is_file() {
                return Err(ConfigError::invalid(
                    "database.ssl_root_cert",
                    format!("{} is not a readable file", cert.display()),
                ));
            }
        }
        if self.database.max_conns == 0 {
            return Err(ConfigError::invalid(
                "database.max_conns",
                "must be at least 1",
            ));
        }
        if self.database.min_conns > self.database.max_conns {
            return Err(ConfigError::invalid(
                "database.min_conns",
                "must not exceed database.max_conns",
            ));
        }
        if self.logging.buffer_lines == 0 {
            return Err(ConfigError::invalid(
                "logging.buffer_lines",
                "must be at least 1",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.logging.level).map_err(|e| {
            ConfigError::invalid(
                "logging.level",
                format!("{e} (use debug, info, warn or error)"),
            )
        })?;
        Ok(())
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        let t = &self.tls;
        match (&t.cert_file, &t.key_file) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "tls.key_file",
                    "must be set when tls.cert_file is",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "tls.cert_file",
                    "must be set when tls.key_file is",
                ))
            }
            _ => {}
        }
        for (setting, path) in [
            ("tls.cert_file", &t.cert_file),
            ("tls.key_file", &t.key_file),
            ("tls.ca_file", &t.ca_file),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    return Err(ConfigError::invalid(
                        setting,
                        format!("{} is not a readable file", path.display()),
                    ));
                }
            }
        }
        if t.peer_mtls && (!t.enabled() || t.ca_file.is_none()) {
            return Err(ConfigError::invalid(
                "tls.peer_mtls",
                "needs tls.cert_file, tls.key_file and tls.ca_file",
            ));
        }
        Ok(())
    }

    /// `https` when TLS is on, else `http`: the scheme every node URL must use.
    pub fn url_scheme(&self) -> &'static str {
        if self.tls.enabled() {
            "https"
        } else {
            "http"
        }
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        for (setting, url) in [
            ("cluster.advertise_api", &c.advertise_api),
            ("cluster.advertise_raft", &c.advertise_raft),
        ] {
            if !url.is_empty() {
                check_url(setting, url)?;
                check_scheme(setting, url, self.url_scheme())?;
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        for m in &c.initial_members {
            if m.id == 0 || !ids.insert(m.id) {
                return Err(ConfigError::invalid(
                    "cluster.initial_members",
                    format!("member ids must be unique and at least 1 (got {})", m.id),
                ));
            }
            check_url("cluster.initial_members", &m.api_addr)?;
            check_url("cluster.initial_members", &m.raft_addr)?;
            check_scheme("cluster.initial_members", &m.api_addr, self.url_scheme())?;
            check_scheme("cluster.initial_members", &m.raft_addr, self.url_scheme())?;
        }
        if !c.initial_members.is_empty() && !ids.contains(&self.raft.node_id) {
            return Err(ConfigError::invalid(
                "cluster.initial_members",
                format!(
                    "must include this node (raft.node_id = {})",
                    self.raft.node_id
                ),
            ));
        }
        if c.secret.is_empty() && !c.insecure {
            let peers = if c.initial_members.len() > 1 {
                Some(format!(
                    "cluster.initial_members lists {} members",
                    c.initial_members.len()
                ))
            } else {
                (!c.bootstrap).then(|| "cluster.bootstrap is false (it joins a cluster)".into())
            };
            if let Some(peers) = peers {
                return Err(ConfigError::invalid(
                    "cluster.secret",
                    format!(
                        "is empty, and {peers}: without a secret anyone who can reach \
                         the Raft listener or the /cluster routes can rewrite the \
                         cluster's data. Set the same cluster.secret (KV_CLUSTER_SECRET) \
                         on every node, or set cluster.insecure: true \
                         (KV_CLUSTER_INSECURE) to run without one on a network you trust"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Tokens go into `Authorization` headers: non-empty visible ASCII, each one once.
    /// Entries are named by position, never by their token.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashMap::new();
        for (i, t) in self.auth.tokens.iter().enumerate() {
            let n = i + 1;
            if t.token.is_empty() {
                return Err(ConfigError::invalid(
                    "auth.tokens",
                    format!("entry {n}: the token is empty"),
                ));
            }
            if !t.token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::invalid(
                    "auth.tokens",
                    format!(
                        "entry {n}: a token may only contain visible ASCII characters, \
                         no spaces"
                    ),
                ));
            }
            if let Some(first) = seen.insert(t.token.as_str(), n) {
                return Err(ConfigError::invalid(
                    "auth.tokens",
                    format!("entries {first} and {n} have the same token; each must be unique"),
                ));
            }
        }
        Ok(())
    }

    /// The socket address the Raft RPC listener binds.
    pub fn raft_listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        resolve(&self.cluster.raft_host, self.cluster.raft_port).ok_or_else(|| {
            ConfigError::invalid(
                "cluster.raft_host",
                format!("cannot resolve `{}`", self.cluster.raft_host),
            )
        })
    }

    /// The socket address the client API listens on.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        resolve(&self.server.host, self.server.port).ok_or_else(|| {
            ConfigError::invalid(
                "server.host",
                format!("cannot resolve `{}`", self.server.host),
            )
        })
    }
}

fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    let host = host.trim();
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    std::net::ToSocketAddrs::to_socket_addrs(&format!("{host}:{port}"))
        .ok()
        .and_then(|mut addrs| addrs.next())
}

/// Node addresses are base URLs: `http://host:port`, without a path.
fn check_url(setting: &'static str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(hostport) if !hostport.is_empty() && !hostport.trim_end_matches('/').contains('/') => {
            Ok(())
        }
        _ => Err(ConfigError::invalid(
            setting,
            format!("`{url}` is not a base URL like http://10.0.0.1:9001"),
        )),
    }
}

/// Node URLs use `https` exactly when TLS is on: a node with TLS listens for nothing
/// else, and one without it cannot speak TLS to its peers.
fn check_scheme(setting: &'static str, url: &str, scheme: &str) -> Result<(), ConfigError> {
    if url.starts_with(&format!("{scheme}://")) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            setting,
            format!(
                "`{url}` must start with {scheme}:// (TLS is {})",
                if scheme == "https" { "on" } else { "off" }
            ),
        ))
    }
}

/// Reads a duration written as `500ms`, `1s`, `2m`, or a bare number of milliseconds.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Millis(u64),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Millis(ms) => Ok(Duration::from_millis(ms)),
        Raw::Text(text) => {
            let text = text.trim();
            if let Ok(ms) = text.parse::<u64>() {
                return Ok(Duration::from_millis(ms));
            }
            humantime::parse_duration(text).map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration `{text}`: {e} (write e.g. 500ms, 1s, 2m)"
                ))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;

    use super::*;

    fn load(yaml: Option<&str>, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let file = yaml.map(|text| {
            let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
            file.write_all(text.as_bytes()).unwrap();
            file
        });
        Settings::load_from(file.as_ref().map(|f| f.path()), |k| env.get(k).cloned())
    }

    fn error_text(yaml: Option<&str>, env: &[(&str, &str)]) -> String {
        load(yaml, env)
            .expect_err("config should be rejected")
            .to_string()
    }

    #[test]
    fn defaults_serve_on_8080_with_redb_under_data() {
        let s = load(None, &[]).unwrap();
        assert_eq!(s.listen_addr().unwrap().to_string(), "0.0.0.0:8080");
        assert_eq!(s.storage.kind, StorageType::File);
        assert_eq!(s.storage.data_dir, PathBuf::from("./data"));
        assert!(s.storage.sync_writes);
        assert_eq!(s.server.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(s.server.max_key_bytes, 1024);
        assert_eq!(s.server.max_value_bytes, 1024 * 1024);
        assert_eq!(s.logging.format, LogFormat::Json);
        assert!(s.raft.pre_vote);
    }

    #[test]
    fn pre_vote_can_be_turned_off() {
        let s = load(Some("raft:\n  pre_vote: false\n"), &[]).unwrap();
        assert!(!s.raft.pre_vote);
        let s = load(None, &[("KV_RAFT_PRE_VOTE", "false")]).unwrap();
        assert!(!s.raft.pre_vote);
        let msg = error_text(None, &[("KV_RAFT_PRE_VOTE", "sometimes")]);
        assert!(msg.contains("pre_vote"), "{msg}");
    }

    #[test]
    fn file_values_replace_defaults() {
        let s = load(
            Some("server:\n  port: 9090\nstorage:\n  data_dir: /tmp/x\nraft:\n  election_timeout: 2s\n"),
            &[],
        )
        .unwrap();
        assert_eq!(s.server.port, 9090);
        assert_eq!(s.storage.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(s.raft.election_timeout, Duration::from_secs(2));
        assert_eq!(s.server.host, "0.0.0.0", "unset keys keep their defaults");
    }

    #[test]
    fn environment_overrides_file() {
        let s = load(
            Some("server:\n  port: 9090\nlogging:\n  level: debug\n"),
            &[
                ("KV_SERVER_PORT", "9191"),
                ("KV_LOG_LEVEL", "warn"),
                ("KV_STORAGE_TYPE", "database"),
                ("KV_DB_HOST", "db.internal"),
                ("KV_DB_PORT", "6543"),
                ("KV_DB_NAME", "kv"),
                ("KV_DB_USER", "kvuser"),
                ("KV_DB_PASSWORD", "s3cret"),
                ("KV_RAFT_HEARTBEAT_TIMEOUT", "50ms"),
            ],
        )
        .unwrap();
        assert_eq!(s.server.port, 9191);
        assert_eq!(s.logging.level, "warn");
        assert_eq!(s.storage.kind, StorageType::Database);
        assert_eq!(s.database.host, "db.internal");
        assert_eq!(s.database.port, 6543);
        assert_eq!(s.database.database, "kv");
        assert_eq!(s.database.username, "kvuser");
        assert_eq!(s.database.password, "s3cret");
        assert_eq!(s.raft.heartbeat_timeout, Duration::from_millis(50));
    }

    #[test]
    fn every_env_override_names_a_real_setting() {
        let defaults: serde_json::Value = {
            let c = config::Config::builder()
                .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Yaml))
                .build()
                .unwrap();
            c.try_deserialize().unwrap()
        };
        for (var, key) in ENV_OVERRIDES {
            let mut node = &defaults;
            for part in key.split('.') {
                node = node
                    .get(part)
                    .unwrap_or_else(|| panic!("{var} maps to unknown {key}"));
            }
        }
    }

    #[test]
    fn logging_defaults_are_quiet_but_warn_of_slow_requests() {
        let s = load(None, &[]).unwrap();
        assert!(!s.logging.access_log);
        assert_eq!(s.logging.slow_request_threshold, Duration::from_millis(200));
        assert_eq!(s.logging.buffer_lines, 16384);
    }

    #[test]
    fn logging_variables_may_be_spelled_after_the_section() {
        let s = load(
            None,
            &[
                ("KV_LOGGING_ACCESS_LOG", "true"),
                ("KV_LOGGING_SLOW_REQUEST_THRESHOLD", "1s"),
                ("KV_LOGGING_LEVEL", "debug"),
            ],
        )
        .unwrap();
        assert!(s.logging.access_log);
        assert_eq!(s.logging.slow_request_threshold, Duration::from_secs(1));
        assert_eq!(s.logging.level, "debug");
        let s = load(
            None,
            &[
                ("KV_LOG_ACCESS_LOG", "true"),
                ("KV_LOG_SLOW_REQUEST_THRESHOLD", "0"),
            ],
        )
        .unwrap();
        assert!(s.logging.access_log);
        assert!(s.logging.slow_request_threshold.is_zero());
        // The same value twice is fine; two different ones name both variables.
        let env = [
            ("KV_LOG_ACCESS_LOG", "true"),
            ("KV_LOGGING_ACCESS_LOG", "true"),
        ];
        assert!(load(None, &env).unwrap().logging.access_log);
        let msg = error_text(
            None,
            &[
                ("KV_LOG_ACCESS_LOG", "true"),
                ("KV_LOGGING_ACCESS_LOG", "false"),
            ],
        );
        assert!(
            msg.contains("logging.access_log")
                && msg.contains("KV_LOG_ACCESS_LOG")
                && msg.contains("KV_LOGGING_ACCESS_LOG"),
            "{msg}"
        );
        let msg = error_text(None, &[("KV_LOG_BUFFER_LINES", "0")]);
        assert!(msg.contains("logging.buffer_lines"), "{msg}");
    }

    #[test]
    fn bare_numbers_are_milliseconds() {
        let s = load(None, &[("KV_SERVER_REQUEST_TIMEOUT", "250")]).unwrap();
        assert_eq!(s.server.request_timeout, Duration::from_millis(250));
    }

    #[test]
    fn unknown_storage_type_names_the_setting() {
        let msg = error_text(Some("storage:\n  type: s3\n"), &[]);
        assert!(msg.contains("storage.type"), "{msg}");
        assert!(msg.contains("s3"), "{msg}");
    }

    #[test]
    fn bad_port_names_the_setting() {
        for port in ["http", "70000", "-1"] {
            let msg = error_text(None, &[("KV_SERVER_PORT", port)]);
            assert!(msg.contains("server.port"), "{port}: {msg}");
        }
    }

    #[test]
    fn unparsable_duration_names_the_setting() {
        let msg = error_text(Some("raft:\n  election_timeout: soon\n"), &[]);
        assert!(msg.contains("raft.election_timeout"), "{msg}");
        assert!(msg.contains("soon"), "{msg}");
        let msg = error_text(None, &[("KV_SERVER_SHUTDOWN_TIMEOUT", "5 parsecs")]);
        assert!(msg.contains("server.shutdown_timeout"), "{msg}");
    }

    #[test]
    fn election_timeout_must_exceed_heartbeat() {
        let msg = error_text(None, &[("KV_RAFT_ELECTION_TIMEOUT", "50ms")]);
        assert!(msg.contains("raft.election_timeout"), "{msg}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let msg = error_text(Some("sever:\n  port: 1\n"), &[]);
        assert!(msg.contains("sever"), "{msg}");
        let msg = error_text(Some("server:\n  prot: 1\n"), &[]);
        assert!(msg.contains("prot"), "{msg}");
    }

    #[test]
    fn bad_log_level_names_the_setting() {
        let msg = error_text(None, &[("KV_LOG_LEVEL", "loud=verbose=yes")]);
        assert!(msg.contains("logging.level"), "{msg}");
    }

    #[test]
    fn database_settings_are_validated() {
        let msg = error_text(None, &[("KV_DB_SSL_MODE", "sometimes")]);
        assert!(msg.contains("database.ssl_mode"), "{msg}");
        let msg = error_text(None, &[("KV_DB_SSL_ROOT_CERT", "/no/such/ca.pem")]);
        assert!(msg.contains("database.ssl_root_cert"), "{msg}");
        let msg = error_text(None, &[("KV_DB_MAX_IDLE_TIME", "forever")]);
        assert!(msg.contains("database.max_idle_time"), "{msg}");
        let s = load(
            None,
            &[
                ("KV_DB_SSL_MODE", "verify-full"),
                ("KV_DB_MAX_CONN_TIME", "30m"),
            ],
        )
        .unwrap();
        assert_eq!(s.database.ssl_mode, "verify-full");
        assert_eq!(s.database.max_conn_time, Duration::from_secs(1800));
    }

    #[test]
    fn zero_node_id_is_rejected() {
        let msg = error_text(None, &[("KV_RAFT_NODE_ID", "0")]);
        assert!(msg.contains("raft.node_id"), "{msg}");
    }

    #[test]
    fn tls_settings_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("x.pem");
        std::fs::write(&pem, "not checked here").unwrap();
        let pem = pem.to_str().unwrap();
        let msg = error_text(None, &[("KV_TLS_CERT_FILE", pem)]);
        assert!(msg.contains("tls.key_file"), "{msg}");
        let msg = error_text(
            None,
            &[
                ("KV_TLS_CERT_FILE", pem),
                ("KV_TLS_KEY_FILE", "/nonexistent.key"),
            ],
        );
        assert!(
            msg.contains("tls.key_file") && msg.contains("/nonexistent.key"),
            "{msg}"
        );
        let msg = error_text(None, &[("KV_TLS_PEER_MTLS", "true")]);
        assert!(msg.contains("tls.peer_mtls"), "{msg}");
        // With TLS on, node URLs must be https, and without it http.
        let tls = [("KV_TLS_CERT_FILE", pem), ("KV_TLS_KEY_FILE", pem)];
        let s = load(None, &tls).unwrap();
        assert!(s.tls.enabled());
        let mut env = tls.to_vec();
        env.push(("KV_CLUSTER_ADVERTISE_RAFT", "http://a:9001"));
        let msg = error_text(None, &env);
        assert!(
            msg.contains("cluster.advertise_raft") && msg.contains("https://"),
            "{msg}"
        );
        let msg = error_text(None, &[("KV_CLUSTER_ADVERTISE_API", "https://a:8080")]);
        assert!(msg.contains("cluster.advertise_api"), "{msg}");
        // An empty variable means unset.
        let s = load(None, &[("KV_TLS_CA_FILE", "")]).unwrap();
        assert!(s.tls.ca_file.is_none() && !s.tls.enabled());
    }

    #[test]
    fn zero_max_in_flight_is_rejected() {
        let msg = error_text(None, &[("KV_SERVER_MAX_IN_FLIGHT", "0")]);
        assert!(msg.contains("server.max_in_flight"), "{msg}");
        let s = load(None, &[("KV_SERVER_MAX_IN_FLIGHT", "8")]).unwrap();
        assert_eq!(s.server.max_in_flight, 8);
    }

    #[test]
    fn value_and_in_flight_byte_limits_are_bounded() {
        let s = load(None, &[]).unwrap();
        assert_eq!(s.server.max_in_flight_bytes, 64 << 20);
        let msg = error_text(None, &[("KV_SERVER_MAX_VALUE_BYTES", "8388609")]);
        assert!(msg.contains("server.max_value_bytes"), "{msg}");
        let msg = error_text(None, &[("KV_SERVER_MAX_KEY_BYTES", "65537")]);
        assert!(msg.contains("server.max_key_bytes"), "{msg}");
        let msg = error_text(None, &[("KV_SERVER_MAX_IN_FLIGHT_BYTES", "1048576")]);
        assert!(msg.contains("server.max_in_flight_bytes"), "{msg}");
        let s = load(
            None,
            &[
                ("KV_SERVER_MAX_VALUE_BYTES", "8388608"),
                ("KV_SERVER_MAX_IN_FLIGHT_BYTES", "8389632"),
            ],
        )
        .unwrap();
        assert_eq!(s.server.max_in_flight_bytes, 8389632);
    }

    #[test]
    fn initial_members_from_yaml_and_from_env() {
        let yaml = "raft:\n  node_id: 2\ncluster:\n  initial_members:\n    - {id: 1, api_addr: \"http://a:8081\", raft_addr: \"http://a:9001\"}\n    - {id: 2, api_addr: \"http://b:8082\", raft_addr: \"http://b:9002\"}\n  secret: \"s3cret\"\n";
        let s = load(Some(yaml), &[]).unwrap();
        assert_eq!(s.cluster.initial_members.len(), 2);
        assert_eq!(s.cluster.initial_members[1].raft_addr, "http://b:9002");

        let s = load(
            None,
            &[
                (
                    "KV_CLUSTER_INITIAL_MEMBERS",
                    "1=http://a:8081|http://a:9001, 2=http://b:8082|http://b:9002",
                ),
                ("KV_CLUSTER_INSECURE", "true"),
            ],
        )
        .unwrap();
        assert_eq!(
            s.cluster.initial_members[1],
            Member {
                id: 2,
                api_addr: "http://b:8082".into(),
                raft_addr: "http://b:9002".into()
            }
        );
    }

    #[test]
    fn initial_members_must_include_this_node_and_be_well_formed() {
        let msg = error_text(
            None,
            &[("KV_CLUSTER_INITIAL_MEMBERS", "2=http://b:1|http://b:2")],
        );
        assert!(msg.contains("cluster.initial_members"), "{msg}");
        let msg = error_text(None, &[("KV_CLUSTER_INITIAL_MEMBERS", "1=nonsense")]);
        assert!(msg.contains("cluster.initial_members"), "{msg}");
        let msg = error_text(
            None,
            &[("KV_CLUSTER_INITIAL_MEMBERS", "1=ftp://x|http://y")],
        );
        assert!(msg.contains("cluster.initial_members"), "{msg}");
        let msg = error_text(None, &[("KV_CLUSTER_ADVERTISE_API", "localhost:8080")]);
        assert!(msg.contains("cluster.advertise_api"), "{msg}");
    }

    /// A node with peers and no `cluster.secret` would leave its Raft listener open: it
    /// refuses to start, naming both settings, unless `cluster.insecure` says to.
    #[test]
    fn a_multi_node_cluster_needs_a_secret_or_insecure() {
        let two = (
            "KV_CLUSTER_INITIAL_MEMBERS",
            "1=http://a:1|http://a:2,2=http://b:1|http://b:2",
        );
        for env in [vec![two], vec![("KV_CLUSTER_BOOTSTRAP", "false")]] {
            let msg = error_text(None, &env);
            assert!(msg.contains("`cluster.secret`"), "{msg}");
            assert!(msg.contains("cluster.insecure"), "{msg}");
            let with_secret = [env.clone(), vec![("KV_CLUSTER_SECRET", "s3cret")]].concat();
            load(None, &with_secret).unwrap();
            let insecure = [env, vec![("KV_CLUSTER_INSECURE", "true")]].concat();
            assert!(load(None, &insecure).unwrap().cluster.insecure);
        }
        // A single node, alone or listed as the only initial member, needs neither.
        load(None, &[]).unwrap();
        load(
            None,
            &[("KV_CLUSTER_INITIAL_MEMBERS", "1=http://a:1|http://a:2")],
        )
        .unwrap();
    }

    #[test]
    fn cluster_secret_is_not_in_debug_output() {
        let s = load(None, &[("KV_CLUSTER_SECRET", "topsecret")]).unwrap();
        assert!(!format!("{s:?}").contains("topsecret"));
    }

    #[test]
    fn auth_is_off_by_default() {
        let s = load(None, &[]).unwrap();
        assert!(s.auth.tokens.is_empty());
        assert!(!s.auth.enabled());
    }

    #[test]
    fn auth_tokens_from_yaml_and_from_env() {
        let yaml = "auth:\n  tokens:\n    - {token: \"t-admin\", role: admin}\n    - {token: \"t-read\", role: read}\n";
        let s = load(Some(yaml), &[]).unwrap();
        assert_eq!(
            s.auth.tokens,
            vec![
                ClientToken {
                    token: "t-admin".into(),
                    role: Role::Admin
                },
                ClientToken {
                    token: "t-read".into(),
                    role: Role::Read
                },
            ]
        );
        assert!(s.auth.enabled());

        // The variable wins over the file; a token may contain `:`.
        let s = load(
            Some(yaml),
            &[("KV_AUTH_TOKENS", " w1:write , a:b:c:admin,r1:read ")],
        )
        .unwrap();
        let tokens: Vec<(&str, Role)> = s
            .auth
            .tokens
            .iter()
            .map(|t| (t.token.as_str(), t.role))
            .collect();
        assert_eq!(
            tokens,
            [
                ("w1", Role::Write),
                ("a:b:c", Role::Admin),
                ("r1", Role::Read)
            ]
        );

        // An empty variable turns auth off, whatever the file says.
        let s = load(Some(yaml), &[("KV_AUTH_TOKENS", "")]).unwrap();
        assert!(!s.auth.enabled());
    }

    #[test]
    fn roles_are_cumulative() {
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
    }

    #[test]
    fn bad_auth_tokens_name_the_setting_but_never_the_token() {
        for (env, wanted) in [
            ("s3cr3t-a:superuser", "unknown role `superuser`"),
            ("s3cr3t-a:read,s3cr3t-b", "entry 2 is not TOKEN:ROLE"),
            (":read", "entry 1: the token is empty"),
            ("s3cr3t-a:read,s3cr3t-a:admin", "entries 1 and 2"),
        ] {
            let msg = error_text(None, &[("KV_AUTH_TOKENS", env)]);
            assert!(msg.contains("auth.tokens"), "{env}: {msg}");
            assert!(msg.contains(wanted), "{env}: {msg}");
            assert!(!msg.contains("s3cr3t"), "{env}: the token leaked: {msg}");
        }
        let msg = error_text(
            Some("auth:\n  tokens:\n    - {token: \"s3cr3t a\", role: read}\n"),
            &[],
        );
        assert!(msg.contains("auth.tokens"), "{msg}");
        assert!(!msg.contains("s3cr3t"), "{msg}");
        let msg = error_text(
            Some("auth:\n  tokens:\n    - {token: \"s3cr3t\", role: owner}\n"),
            &[],
        );
        assert!(msg.contains("auth.tokens"), "{msg}");
        assert!(msg.contains("unknown role `owner`"), "{msg}");
        assert!(!msg.contains("s3cr3t"), "{msg}");
    }

    #[test]
    fn auth_tokens_are_not_in_debug_output() {
        let s = load(None, &[("KV_AUTH_TOKENS", "tippytop:admin,hushhush:read")]).unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("tippytop"), "{debug}");
        assert!(!debug.contains("hushhush"), "{debug}");
        assert!(debug.contains("Admin"), "the roles are shown: {debug}");
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let err = Settings::load_from(Some(Path::new("/no/such/kv.yaml")), |_| None).unwrap_err();
        assert!(err.to_string().contains("/no/such/kv.yaml"), "{err}");
    }

    #[test]
    fn database_password_is_not_in_debug_output() {
        let s = load(None, &[("KV_DB_PASSWORD", "hunter2")]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
