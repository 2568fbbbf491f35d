//! Bringing a node up: bind both listeners (client API and Raft RPC), start Raft and
//! storage, serve until told to stop, then shut down in order: stop accepting clients,
//! drain their requests, stop the background tasks, stop Raft, flush storage, and last
//! stop the Raft listener and the streams it serves (draining client writes may still
//! need the peers).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use poem::listener::{AcceptorExt, BoxAcceptor, TcpAcceptor};
use poem::Server;

use crate::api::{self, Limits};
use crate::background::Background;
use crate::config::Settings;
use crate::raft::{self, NodeAddr, RaftNode};

/// How long shutdown waits for the background tasks to see the signal and end. They
/// check it between rounds, each of a few storage reads at most.
const BACKGROUND_STOP: Duration = Duration::from_secs(5);

/// A node that is bound and started but not yet serving.
pub struct Application {
    api: BoxAcceptor,
    api_addr: SocketAddr,
    raft: BoxAcceptor,
    raft_addr: SocketAddr,
    node: RaftNode,
    /// The node's background tasks, stopped before the store closes.
    background: Background,
    /// The replication streams the Raft listener serves, stopped once Raft has: until
    /// then a peer's forwarded write on one may still commit here.
    streams: Background,
    limits: Limits,
    shutdown_timeout: Duration,
    secret: String,
    auth: api::Auth,
    request_log: std::sync::Arc<api::RequestLog>,
}

impl Application {
    /// Binds `server.host:server.port` and `cluster.raft_host:cluster.raft_port` (port 0
    /// picks a free port), opens storage and starts Raft.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        crate::tls::install_provider();
        let api_tls = crate::tls::server_config(&settings.tls, false)?;
        let raft_tls = crate::tls::server_config(&settings.tls, settings.tls.peer_mtls)?;
        let (api, api_addr) = bind(settings.listen_addr()?, "server.port", api_tls).await?;
        let (raft, raft_addr) =
            bind(settings.raft_listen_addr()?, "cluster.raft_port", raft_tls).await?;
        let scheme = settings.url_scheme();
        let advertised = NodeAddr {
            api_addr: advertised_url(&settings.cluster.advertise_api, scheme, api_addr),
            raft_addr: advertised_url(&settings.cluster.advertise_raft, scheme, raft_addr),
        };
        if settings.cluster.secret.is_empty() {
            tracing::warn!(
                raft_addr = %raft_addr,
                insecure = settings.cluster.insecure,
                "cluster.secret is not set: the Raft listener and the /cluster routes \
                 accept requests from anyone who can reach them, who can then read and \
                 rewrite every key; set the same cluster.secret on every node"
            );
        }
        crate::telemetry::metrics::install();
        let node = raft::start(settings, advertised).await?;
        let background = Background::new();
        background.spawn(|stop| raft::watch_raft(&node, stop));
        background.spawn(|stop| raft::sample_storage(&node, stop));
        background.spawn(|stop| node.watch_space(stop));
        background.spawn(|stop| node.expire_leases(stop));
        Ok(Self {
            api,
            api_addr,
            raft,
            raft_addr,
            node,
            background,
            streams: Background::new(),
            limits: Limits {
                max_key_bytes: settings.server.max_key_bytes,
                max_value_bytes: settings.server.max_value_bytes,
                max_in_flight: settings.server.max_in_flight,
                max_in_flight_bytes: settings.server.max_in_flight_bytes,
                request_timeout: settings.server.request_timeout,
            },
            shutdown_timeout: settings.server.shutdown_timeout,
            secret: settings.cluster.secret.clone(),
            auth: api::Auth::new(&settings.auth),
            request_log: std::sync::Arc::new(api::RequestLog::new(&settings.logging)),
        })
    }

    /// The address the client API is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The address the Raft listener is bound to.
    pub fn raft_addr(&self) -> SocketAddr {
        self.raft_addr
    }

    pub fn node(&self) -> &RaftNode {
        &self.node
    }

    /// Serves until `shutdown` completes, then gives in-flight requests up to
    /// `server.shutdown_timeout` to finish, stops Raft and flushes storage.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop_raft, raft_stopped) = tokio::sync::oneshot::channel::<()>();
        let rpc = raft::rpc_app(
            self.node.clone(),
            self.secret.clone(),
            self.node.incoming_snapshot_dir(),
            self.streams.clone(),
        );
        let raft_server = tokio::spawn(
            Server::new_with_acceptor(self.raft).run_with_graceful_shutdown(
                rpc,
                async {
                    let _ = raft_stopped.await;
                },
                Some(Duration::from_secs(1)),
            ),
        );
        tracing::info!(addr = %self.api_addr, raft_addr = %self.raft_addr, node_id = self.node.id(), "serving the client API");

        let app = api::app(
            self.node.clone(),
            self.limits,
            self.secret.clone(),
            self.auth.clone(),
            self.request_log.clone(),
        );
        let served = Server::new_with_acceptor(self.api)
            .run_with_graceful_shutdown(app, shutdown, Some(self.shutdown_timeout))
            .await;
        tracing::info!("HTTP server stopped; shutting down raft and storage");
        self.background.shutdown(BACKGROUND_STOP).await;
        let stopped = self.node.shutdown().await;
        let _ = stop_raft.send(());
        let raft_served = raft_server.await;
        self.streams.shutdown(BACKGROUND_STOP).await;
        served?;
        stopped?;
        raft_served??;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// Listens on `addr`, with TLS when `tls` is given.
async fn bind(
    addr: SocketAddr,
    setting: &str,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) -> anyhow::Result<(BoxAcceptor, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("invalid setting `{setting}`: cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let acceptor = match tls {
        Some(config) => crate::tls::TlsAcceptor::new(listener, config)?.boxed(),
        None => TcpAcceptor::from_tokio(listener)?.boxed(),
    };
    Ok((acceptor, local))
}

/// The URL a listener is reached at: the configured one, or else the bound address,
/// with a wildcard address advertised as loopback.
fn advertised_url(configured: &str, scheme: &str, bound: SocketAddr) -> String {
    if !configured.is_empty() {
        return configured.trim_end_matches('/').to_string();
    }
    format!("{scheme}://{}", reachable_locally(bound))
}

/// Where a listener bound to `bound` is reached from this machine: a wildcard address
/// becomes loopback of the same family.
pub fn reachable_locally(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".parse().expect("literal"),
        ip if ip.is_unspecified() => "::1".parse().expect("literal"),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
