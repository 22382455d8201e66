//! TLS for pkd's listeners and node-to-node links (rustls, with the ring provider).
//!
//! Certificates and keys come from PEM files. A [`Reloading`] configuration looks at its
//! files' modification times every few seconds and, when they change, builds a new
//! configuration from them: new connections use it, established ones keep theirs. A file
//! that does not parse leaves the configuration in force (and is logged), so a certificate
//! can be replaced without a restart and without risk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the files of a [`Reloading`] configuration are looked at.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider every configuration of pkd uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process's default crypto provider, for the libraries that build their
/// own TLS configurations (the MySQL and Redis clients). Harmless if already done.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The files of a server's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFiles {
    /// The certificate chain, PEM, leaf first.
    pub certificate: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| TlsError::File { path: path.to_owned(), message: error.to_string() })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certificates)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|error| TlsError::File { path: path.to_owned(), message: error.to_string() })
}

/// A server configuration from `files`.
pub fn server_config(files: &ServerFiles) -> Result<ServerConfig, TlsError> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(read_certificates(&files.certificate)?, read_key(&files.key)?)?;
    Ok(config)
}

/// A client configuration that trusts the certificates (CAs) in `ca`, PEM.
pub fn client_config(ca: &Path) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(ca)? {
        roots.add(certificate)?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// A server configuration kept in step with its files.
#[derive(Debug)]
pub struct Reloading {
    files: ServerFiles,
    current: RwLock<(Arc<ServerConfig>, Option<SystemTime>)>,
}

impl Reloading {
    /// Loads `files` now (failing if they do not make a configuration).
    pub fn load(files: ServerFiles) -> Result<Arc<Reloading>, TlsError> {
        let config = Arc::new(server_config(&files)?);
        let stamp = stamp(&files);
        Ok(Arc::new(Reloading { files, current: RwLock::new((config, stamp)) }))
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).0)
    }

    /// Builds the configuration again if the files changed; `true` if it did.
    pub fn reload_if_changed(&self) -> bool {
        let stamp = stamp(&self.files);
        let seen = self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).1;
        if stamp == seen {
            return false;
        }
        match server_config(&self.files) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = (Arc::new(config), stamp);
                tracing::info!(certificate = %self.files.certificate.display(), "TLS certificate reloaded");
                true
            }
            Err(error) => {
                tracing::error!(%error, "the new TLS files do not load; the previous certificate stays in force");
                // Remember the stamp, so that a broken file is reported once, not every look.
                self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()).1 = stamp;
                false
            }
        }
    }

    /// Looks at the files every [`RELOAD_EVERY`] until `stop`.
    pub fn watch(self: &Arc<Self>, tasks: &TaskTracker, stop: CancellationToken) {
        let reloading = Arc::clone(self);
        tasks.spawn(async move {
            let mut every = tokio::time::interval(RELOAD_EVERY);
            loop {
                tokio::select! {
                    _ = every.tick() => { reloading.reload_if_changed(); }
                    () = stop.cancelled() => return,
                }
            }
        });
    }
}

/// When the certificate and the key last changed.
fn stamp(files: &ServerFiles) -> Option<SystemTime> {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|meta| meta.modified()).ok();
    modified(&files.certificate).max(modified(&files.key))
}
