//! TLS with rustls (the `ring` provider): the server configuration both listeners
//! use, the client configuration for calls to peers, and an acceptor that runs
//! handshakes off the accept loop, so a client that stalls its handshake holds up no
//! one else.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use rustls::crypto::{ring, CryptoProvider};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::config::TlsSettings;

/// How long a client gets to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes `ring` the process's default rustls provider (for any rustls user that does
/// not choose one itself). Idempotent.
pub fn install_provider() {
    let _ = ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn certs(setting: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("invalid setting `{setting}`: {}: {e}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "invalid setting `{setting}`: {} holds no PEM certificate",
        path.display()
    );
    Ok(certs)
}

fn key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        anyhow::anyhow!(
            "invalid setting `tls.key_file`: {}: no usable private key ({e})",
            path.display()
        )
    })
}

fn roots(path: &Path) -> anyhow::Result<RootCertStore> {
    roots_named("tls.ca_file", path)
}

/// The CA certificates in `path`; `setting` names where the path came from.
fn roots_named(setting: &str, path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs(setting, path)? {
        roots
            .add(cert)
            .map_err(|e| anyhow::anyhow!("invalid setting `{setting}`: {e}"))?;
    }
    Ok(roots)
}

/// The server side of TLS for one listener; `require_peer_cert`: accept only clients
/// with a certificate from `tls.ca_file` (mutual TLS). `None` when TLS is off.
pub fn server_config(
    tls: &TlsSettings,
    require_peer_cert: bool,
) -> anyhow::Result<Option<Arc<ServerConfig>>> {
    let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) else {
        return Ok(None);
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match (&tls.ca_file, require_peer_cert) {
        (Some(ca), true) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                .build()
                .context("invalid setting `tls.ca_file`")?,
        ),
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs("tls.cert_file", cert_file)?, key(key_file)?)
        .map_err(|e| {
            anyhow::anyhow!("invalid setting `tls.key_file`: it does not match tls.cert_file ({e})")
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// The client side for calls to peers: trusts `tls.ca_file`, and presents this node's
/// certificate when `tls.peer_mtls` is on. `None` when TLS is off.
pub fn client_config(tls: &TlsSettings) -> anyhow::Result<Option<ClientConfig>> {
    let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) else {
        return Ok(None);
    };
    let roots = match &tls.ca_file {
        Some(ca) => roots(ca)?,
        None => RootCertStore::empty(),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    let mut config = if tls.peer_mtls {
        builder
            .with_client_auth_cert(certs("tls.cert_file", cert_file)?, key(key_file)?)
            .map_err(|e| anyhow::anyhow!("invalid setting `tls.key_file`: {e}"))?
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(config))
}

/// The client side for the command-line tools (`kvstore health`, `kvbench`): trusts
/// the CA certificates in `ca_file` (PEM, such as the cluster's `tls.ca_file`), which
/// `option` names in errors.
pub fn tool_client_config(option: &str, ca_file: &Path) -> anyhow::Result<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots_named(option, ca_file)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts TCP connections and completes their TLS handshakes in their own tasks;
/// [`Acceptor::accept`] hands out the connections whose handshake succeeded.
pub struct TlsAcceptor {
    local: LocalAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, RemoteAddr)>,
}

impl TlsAcceptor {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> anyhow::Result<Self> {
        let local = LocalAddr(listener.local_addr()?.into());
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    // Stop listening (and free the port) once the server is gone.
                    _ = tx.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(conn) => conn,
                        Err(e) => {
                            // Out of file descriptors and the like: back off a little.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, RemoteAddr(peer.into()))).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { local, ready })
    }
}

impl Acceptor for TlsAcceptor {
    type Io = TlsStream<TcpStream>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        vec![self.local.clone()]
    }

    async fn accept(&mut self) -> std::io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        match self.ready.recv().await {
            Some((stream, peer)) => Ok((stream, self.local.clone(), peer, Scheme::HTTPS)),
            None => Err(std::io::Error::other("the TLS accept loop stopped")),
        }
    }
}
