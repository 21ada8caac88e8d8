//! Certificate and key files for the TLS listeners: reading PEM files into
//! a shareable rustls [`ServerConfig`], at start, at `--check-config` and on
//! SIGHUP.
//!
//! Owns: which files are read, which key kinds are accepted, and the errors
//! that name the file at fault.
//! Must never: keep a file open, accept a certificate whose key does not
//! match it, or leave a listener without a config (a failed reload keeps the
//! old one: the caller keeps its `Arc`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SingleCertAndKey};

use super::ALPN_HTTP11;

/// Why certificate or key files cannot be served with.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: malformed PEM: {source}", path.display())]
    Pem { path: PathBuf, source: pem::Error },
    #[error("{}: no certificate (PEM \"CERTIFICATE\" section) in the file", path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "{}: no private key in the file (PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\"; encrypted keys are not supported)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("{}: private key not usable: {source}", path.display())]
    BadKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{}: first certificate not usable: {source}", path.display())]
    BadCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error(
        "private key {} does not match the certificate {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "cannot build a TLS configuration from {} and {}: {source}",
        cert.display(),
        key.display()
    )]
    Rustls {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// Builds a server configuration from PEM files: `cert_path` holds the chain,
/// leaf first (every certificate in the file is sent); `key_path` holds the
/// leaf's private key as PKCS#8, PKCS#1 (RSA) or SEC1 (EC). Both may be the
/// same file. TLS 1.3 and 1.2, no client certificates; with `alpn_http11`
/// the server agrees to ALPN `http/1.1` (a client that offers ALPN without
/// it is then refused, as RFC 7301 asks). Whether connections offer their
/// record layer to the kernel is the listener's choice (`ktls`), made per
/// connection in [`TlsStream::new`].
///
/// Pure apart from reading the two files, so it serves start-up,
/// `--check-config` and SIGHUP reload alike.
pub(crate) fn load_server_config(
    cert_path: &Path,
    key_path: &Path,
    alpn_http11: bool,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let certs = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    // Named explicitly rather than taken from the process default, which
    // would panic at run time if another crate ever enabled a second provider.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = certified_key(&provider, certs, key, cert_path, key_path)?;
    let rustls_error = |source| TlsConfigError::Rustls {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rustls_error)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    if alpn_http11 {
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    }
    // After the handshake a connection's records are protected by our own
    // record layer (or the kernel's): rustls hands over the keys, and
    // reports the TLS 1.3 traffic secrets that key updates derive from to
    // this hook, which keeps them in memory only.
    config.enable_secret_extraction = true;
    config.key_log = Arc::new(super::record::CaptureSecrets);
    Ok(Arc::new(config))
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem_bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsConfigError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let pem_bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem_bytes).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsConfigError::NoKey {
            path: path.to_path_buf(),
        },
        source => TlsConfigError::Pem {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Pairs chain and key, refusing a key that is not the leaf's: a mismatch
/// would otherwise only show as every handshake failing.
fn certified_key(
    provider: &CryptoProvider,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsConfigError> {
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsConfigError::BadKey {
            path: key_path.to_path_buf(),
            source,
        })?;
    let certified = CertifiedKey::new(certs, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsConfigError::KeyMismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            })
        }
        // The key cannot tell its public half; rustls accepts that too, and
        // a wrong key then fails at the first handshake.
        Err(rustls::Error::InconsistentKeys(_)) => Ok(certified),
        Err(source) => Err(TlsConfigError::BadCertificate {
            path: cert_path.to_path_buf(),
            source,
        }),
    }
}
