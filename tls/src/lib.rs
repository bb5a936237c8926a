//! Mutual TLS between the router and plugin shims, used by all three binaries: server configs
//! and a reloading acceptor (shim, router's host API), peer identities, and with the `issue`
//! feature the operator's CA ([`pki`]).
//!
//! The operator's CA issues every plugin a certificate for its identity (a DNS name, see
//! `airlock_core::identity`) and mounts it with the CA certificate in `--tls-dir`. The shim
//! serves TLS with it, requires a client certificate from the same CA, and then admits only the
//! router's identity to the plugin API ([`only_the_router`]): another plugin's certificate, or no
//! certificate at all, gets nothing. The files are re-read when Kubernetes updates the mounted
//! Secret (re-issued before it expires, or after the CA was replaced), so rotation needs no
//! restart. The router serves the host API with the same [`server_config`] and [`Acceptor`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use airlock_core::identity::ROUTER_IDENTITY;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::{Request, Status};
use tracing::{debug, info, warn};
use x509_parser::extensions::GeneralName;

#[cfg(feature = "issue")]
pub mod pki;

/// File names in `--tls-dir`: the keys of a `kubernetes.io/tls` Secret plus the CA.
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
pub const CA_FILE: &str = "ca.crt";

/// How often the mounted files are checked for new ones.
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} holds no usable {what} (PEM expected; the operator writes it from the plugin's \
         TLS Secret)",
        path.display()
    )]
    Pem { path: PathBuf, what: &'static str },
    #[error("the TLS configuration is invalid: {0}")]
    Config(#[from] rustls::Error),
    #[error("the CA certificate cannot verify clients: {0}")]
    Verifier(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A certificate (with its chain) and its private key, both PEM: what the operator's CA issues
/// (`pki::Issued`) and what the router presents to plugin shims.
#[derive(Clone, PartialEq, Eq)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertAndKey {
    // The private key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey").finish_non_exhaustive()
    }
}

/// A server configuration for mutual TLS: serves `cert_pem` (chain) with `key_pem` and requires a
/// client certificate issued by `ca_pem`. `origin` names where the PEM came from, for errors.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    ca_pem: &[u8],
    origin: &Path,
) -> Result<rustls::ServerConfig, TlsError> {
    let pem_error = |file: &str, what| TlsError::Pem {
        path: origin.join(file),
        what,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .ok()
        .filter(|c: &Vec<_>| !c.is_empty())
        .ok_or_else(|| pem_error(CERT_FILE, "certificate"))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| pem_error(KEY_FILE, "private key"))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|_| pem_error(CA_FILE, "CA certificate"))?;
        roots.add(cert).map_err(TlsError::Config)?;
    }
    if roots.is_empty() {
        return Err(pem_error(CA_FILE, "CA certificate"));
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts TLS connections with a configuration that can be replaced while serving (a re-issued
/// certificate, a new CA): each new connection uses the configuration of the moment.
#[derive(Debug)]
pub struct Acceptor {
    config: RwLock<Arc<rustls::ServerConfig>>,
}

impl Acceptor {
    pub fn new(config: rustls::ServerConfig) -> Arc<Self> {
        Arc::new(Self {
            config: RwLock::new(Arc::new(config)),
        })
    }

    /// Uses `config` for the connections accepted from now on.
    pub fn replace(&self, config: rustls::ServerConfig) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }

    fn current(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(
            &self.config.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }

    /// Accepted TLS connections on `listener`, for `Server::serve_with_incoming`. Handshakes run
    /// in tasks of their own (a slow client holds up nobody); failed ones are logged and dropped.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            warn!(error = %e, "accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    _ = tx.closed() => return,
                };
                // Nagle would hold a response's last small write for the client's delayed ACK.
                let _ = tcp.set_nodelay(true);
                let acceptor = this.current();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => {
                            warn!(%peer, error = %e, "refused a connection: TLS handshake failed (a client certificate from the operator's CA is required)");
                        }
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// The shim's TLS server: the files in `--tls-dir`, re-read every 30 s so a re-issued certificate
/// (or a new CA) is used without a restart.
#[derive(Debug, Clone)]
pub struct ServerTls {
    dir: PathBuf,
    acceptor: Arc<Acceptor>,
}

impl ServerTls {
    /// Reads `dir` (see [`CERT_FILE`], [`KEY_FILE`], [`CA_FILE`]).
    pub fn from_dir(dir: &Path) -> Result<Self, TlsError> {
        let (_, config) = Self::load(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            acceptor: Acceptor::new(config),
        })
    }

    /// The three files' bytes and the configuration they make.
    fn load(dir: &Path) -> Result<(Vec<u8>, rustls::ServerConfig), TlsError> {
        let cert = read(&dir.join(CERT_FILE))?;
        let key = read(&dir.join(KEY_FILE))?;
        let ca = read(&dir.join(CA_FILE))?;
        let config = server_config(&cert, &key, &ca, dir)?;
        Ok(([cert, key, ca].concat(), config))
    }

    /// Accepted TLS connections on `listener` (see [`Acceptor::incoming`]); also re-reads the
    /// files every 30 s for as long as the server runs. A broken new file keeps the old ones.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsStream<TcpStream>>> {
        let (dir, acceptor) = (self.dir.clone(), Arc::clone(&self.acceptor));
        let weak = Arc::downgrade(&self.acceptor);
        tokio::spawn(async move {
            let mut last = Self::load(&dir).map(|(bytes, _)| bytes).unwrap_or_default();
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(acceptor) = weak.upgrade() else {
                    return;
                };
                match Self::load(&dir) {
                    Ok((bytes, config)) if bytes != last => {
                        acceptor.replace(config);
                        last = bytes;
                        info!("loaded the re-issued TLS certificate");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, "cannot reload the TLS certificate; keeping the current one");
                    }
                }
            }
        });
        acceptor.incoming(listener)
    }
}

/// The DNS names of the client's (leaf) certificate.
pub fn peer_identities(certs: &[CertificateDer<'_>]) -> Vec<String> {
    let Some(leaf) = certs.first() else {
        return Vec::new();
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return Vec::new();
    };
    dns_names(&cert)
}

/// Prefix of the URI name that binds a plugin's certificate to one Plugin object (its uid): a
/// certificate of a deleted Plugin is worth nothing for a new Plugin of the same name.
pub const PLUGIN_UID_URI_PREFIX: &str = "urn:airlock:plugin-uid:";

/// The Plugin uid a peer's certificate is bound to ([`PLUGIN_UID_URI_PREFIX`]), if any.
pub fn peer_plugin_uid(certs: &[CertificateDer<'_>]) -> Option<String> {
    let leaf = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    bound_uid(&cert)
}

/// The Plugin uid a certificate is bound to, from its URI name.
pub fn bound_uid(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    let san = cert.subject_alternative_name().ok().flatten()?;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => u.strip_prefix(PLUGIN_UID_URI_PREFIX).map(str::to_string),
        _ => None,
    })
}

/// The DNS names a certificate is for (its subject alternative names): how Airlock identities
/// are carried (see `airlock_proto::identity`).
pub fn dns_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Interceptor of the plugin API when serving TLS: only the router's identity may call.
/// (Without TLS there are no peer certificates and nothing to check: local development only.)
#[allow(clippy::result_large_err)] // the interceptor signature is tonic's
pub fn only_the_router(request: Request<()>) -> Result<Request<()>, Status> {
    let Some(certs) = request.peer_certs() else {
        return Err(Status::unauthenticated(
            "this plugin accepts calls only from the Airlock router over mutual TLS; no client \
             certificate was presented",
        ));
    };
    let identities = peer_identities(&certs);
    if identities.iter().any(|id| id == ROUTER_IDENTITY) {
        return Ok(request);
    }
    warn!(caller = ?identities, "refused a call that did not come from the router");
    Err(Status::permission_denied(format!(
        "this plugin accepts calls only from the Airlock router ({ROUTER_IDENTITY}); the caller \
         is {identities:?}"
    )))
}
