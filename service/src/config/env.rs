//! Environment overrides: which `KV_*` variable sets which setting.

use super::ConfigError;

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

/// Sets every variable that `env` has on `builder`, as an override of its setting.
pub(super) fn apply(
    mut builder: config::ConfigBuilder<config::builder::DefaultState>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<config::ConfigBuilder<config::builder::DefaultState>, ConfigError> {
    for (var, key) in ENV_OVERRIDES {
        if let Some(value) = env_value(env, var, key)? {
            builder = builder
                .set_override(*key, value)
                .map_err(|e| ConfigError::Parse(format!("{var}: {e}")))?;
        }
    }
    Ok(builder)
}
