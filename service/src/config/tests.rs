use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
        Some(
            "server:\n  port: 9090\nstorage:\n  data_dir: /tmp/x\nraft:\n  election_timeout: 2s\n",
        ),
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
