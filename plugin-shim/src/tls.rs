//! The shim's side of the router ↔ shim mutual TLS.
//!
//! The operator's CA issues every plugin a certificate for its identity (a DNS name, see
//! `airlock_proto::identity`) and mounts it with the CA certificate in `--tls-dir`. The shim
//! serves TLS with it, requires a client certificate from the same CA, and then admits only the
//! router's identity to the plugin API ([`only_the_router`]): another plugin's certificate, or no
//! certificate at all, gets nothing. The certificate is re-read when Kubernetes updates the mounted
//! Secret (re-issued before it expires), so rotation needs no restart; the CA itself is read once.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use airlock_proto::identity::ROUTER_IDENTITY;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::{Request, Status};
use tracing::{debug, info, warn};
use x509_parser::extensions::GeneralName;

/// File names in `--tls-dir`: the keys of a `kubernetes.io/tls` Secret plus the CA.
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
pub const CA_FILE: &str = "ca.crt";

/// How often the mounted certificate is checked for a new one.
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

/// The certificate chain and key in `dir`, and the certificate's bytes (to see changes).
fn load_certified_key(dir: &Path) -> Result<(Vec<u8>, Arc<CertifiedKey>), TlsError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&key_path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .ok()
        .filter(|c: &Vec<_>| !c.is_empty())
        .ok_or(TlsError::Pem {
            path: cert_path,
            what: "certificate",
        })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Pem {
        path: key_path.clone(),
        what: "private key",
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(TlsError::Config)?;
    Ok((cert_pem, Arc::new(CertifiedKey::new(chain, signing))))
}

/// The serving certificate, replaced when the file changes.
#[derive(Debug)]
pub struct ReloadingCert {
    dir: PathBuf,
    current: RwLock<(Vec<u8>, Arc<CertifiedKey>)>,
}

impl ReloadingCert {
    /// Re-reads the certificate; true when it changed. A broken new file keeps the old one.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (bytes, key) = load_certified_key(&self.dir)?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.0 == bytes {
            return Ok(false);
        }
        *current = (bytes, key);
        Ok(true)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|e| e.into_inner()).1,
        ))
    }
}

/// The shim's TLS server: its configuration and the certificate it reloads.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    cert: Arc<ReloadingCert>,
}

impl ServerTls {
    /// Reads `dir` (see [`CERT_FILE`], [`KEY_FILE`], [`CA_FILE`]).
    pub fn from_dir(dir: &Path) -> Result<Self, TlsError> {
        let ca_path = dir.join(CA_FILE);
        let ca_pem = read(&ca_path)?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            let cert = cert.map_err(|_| TlsError::Pem {
                path: ca_path.clone(),
                what: "CA certificate",
            })?;
            roots.add(cert).map_err(TlsError::Config)?;
        }
        if roots.is_empty() {
            return Err(TlsError::Pem {
                path: ca_path,
                what: "CA certificate",
            });
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let cert = Arc::new(ReloadingCert {
            dir: dir.to_path_buf(),
            current: RwLock::new(load_certified_key(dir)?),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(cert.clone());
        // gRPC is HTTP/2 only.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            cert,
        })
    }

    /// Accepted TLS connections on `listener`, for `Server::serve_with_incoming`. Handshakes run
    /// in tasks of their own (a slow client holds up nobody); failed ones are logged and dropped.
    /// Also re-reads the certificate every 30 s for as long as the stream lives.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = TlsAcceptor::from(Arc::clone(&self.config));
        let cert = Arc::clone(&self.cert);
        tokio::spawn(async move {
            let mut reload = tokio::time::interval(RELOAD_EVERY);
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
                    _ = reload.tick() => {
                        match cert.reload() {
                            Ok(true) => info!("loaded the re-issued TLS certificate"),
                            Ok(false) => {}
                            Err(e) => warn!(error = %e, "cannot reload the TLS certificate; keeping the current one"),
                        }
                        continue;
                    }
                    _ = tx.closed() => return,
                };
                // Nagle would hold a response's last small write for the client's delayed ACK.
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => {
                            warn!(%peer, error = %e, "refused a connection: TLS handshake failed (only the Airlock router, with a certificate from the operator's CA, may connect)");
                        }
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
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
