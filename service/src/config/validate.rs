//! The rules serde cannot express: bounds, settings that only make sense together, and
//! the addresses the node will listen on and advertise. Each error names its setting.

use std::net::SocketAddr;

use super::{ConfigError, Settings, MAX_KEY_BYTES_CEILING, MAX_VALUE_BYTES_CEILING};

impl Settings {
    /// Checks the rules serde cannot express. Checks that need the file system (a
    /// writable data dir) happen when the store opens.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
