//! Bringing a node up: bind the listener, start Raft and storage, serve until told to
//! stop, then shut down in order (stop accepting, drain requests, stop Raft, flush).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use poem::listener::{Acceptor, TcpAcceptor};
use poem::Server;

use crate::api::{self, Limits};
use crate::config::Settings;
use crate::raft::{self, RaftNode};

/// A node that is bound and started but not yet serving.
pub struct Application {
    acceptor: TcpAcceptor,
    local_addr: SocketAddr,
    node: RaftNode,
    limits: Limits,
    shutdown_timeout: Duration,
}

impl Application {
    /// Binds `server.host:server.port` (port 0 picks a free port), opens storage and
    /// starts Raft.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let addr = settings.listen_addr()?;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("invalid setting `server.port`: cannot listen on {addr}: {e}")
        })?;
        let local_addr = listener.local_addr()?;
        let acceptor = TcpAcceptor::from_tokio(listener)?;
        let node = raft::start(settings, advertised_url(local_addr)).await?;
        Ok(Self {
            acceptor,
            local_addr,
            node,
            limits: Limits {
                max_key_bytes: settings.server.max_key_bytes,
                max_value_bytes: settings.server.max_value_bytes,
                request_timeout: settings.server.request_timeout,
            },
            shutdown_timeout: settings.server.shutdown_timeout,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn node(&self) -> &RaftNode {
        &self.node
    }

    /// Serves until `shutdown` completes, then gives in-flight requests up to
    /// `server.shutdown_timeout` to finish, stops Raft and flushes storage.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        debug_assert!(self.acceptor.local_addr().len() == 1);
        tracing::info!(addr = %self.local_addr, node_id = self.node.id(), "serving the client API");
        let app = api::app(self.node.clone(), self.limits);
        Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(app, shutdown, Some(self.shutdown_timeout))
            .await?;
        tracing::info!("HTTP server stopped; shutting down raft and storage");
        self.node.shutdown().await?;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// The URL this node's API is reachable at, as recorded in the cluster membership. A
/// wildcard bind address is advertised as loopback.
fn advertised_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".parse().expect("literal"),
        ip if ip.is_unspecified() => "::1".parse().expect("literal"),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
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
