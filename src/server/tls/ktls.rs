//! Kernel TLS (Linux kTLS) for a connection whose handshake rustls has
//! completed.
//!
//! Owns: handing a connection's record layer to the kernel (the `tls`
//! upper-layer protocol on the socket, then the traffic keys, IVs and
//! sequence numbers of both directions), and the process-wide tally of
//! connections that asked for it but stayed in user space.
//! Must never: be called while rustls or the stream still holds records in
//! either direction (the kernel starts from the sequence numbers handed
//! over); use `unsafe` (nix's socket options do the system calls); change a
//! socket the kernel cannot take beyond the one `setsockopt` that failed.

use std::fmt::Display;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use log::info;
use mio::net::TcpStream;
use nix::libc;
use nix::sys::socket::setsockopt;
use nix::sys::socket::sockopt::{TcpTlsRx, TcpTlsTx, TcpUlp, TlsCryptoInfo};
use rustls::server::UnbufferedServerConnection;
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

/// Connections that asked for kTLS and stayed in user-space TLS.
static FALLBACKS: AtomicU64 = AtomicU64::new(0);

/// Connections whose record layer the kernel took.
static HANDED_OVER: AtomicU64 = AtomicU64::new(0);

/// The first fallback is logged; the rest are only counted.
static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

/// How many connections asked for kTLS and stayed in user space, and how
/// many the kernel took, since start. For the tests and the metrics page,
/// which does not show them yet.
#[cfg_attr(not(test), expect(dead_code))]
pub(crate) fn counts() -> (u64, u64) {
    (
        FALLBACKS.load(Ordering::Relaxed),
        HANDED_OVER.load(Ordering::Relaxed),
    )
}

/// Records a connection that stays in user space: counted, and logged at
/// info the first time (a kernel without the module says so for every
/// connection).
pub(super) fn fall_back(why: impl Display) {
    FALLBACKS.fetch_add(1, Ordering::Relaxed);
    if !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
        info!(
            "kTLS not used, TLS stays in user space: {why} (logged once; later connections fall back silently)"
        );
    }
}

/// Why the kernel could not take this connection's record layer, judged
/// from what was negotiated, before anything irreversible.
pub(super) fn unsuitable(conn: &UnbufferedServerConnection) -> Option<&'static str> {
    if kernel_version(conn.protocol_version()).is_none() {
        return Some("protocol version not known to kTLS");
    }
    if !super::record::known_suite(conn) {
        return Some("cipher suite not supported by kTLS");
    }
    None
}

/// Attaches the kernel's `tls` upper-layer protocol. Fails (ENOENT) where
/// the module is absent, leaving the socket as it was.
pub(super) fn attach(tcp: &TcpStream) -> io::Result<()> {
    setsockopt(tcp, TcpUlp::default(), b"tls").map_err(io::Error::from)
}

/// Hands the keys of both directions to the kernel, which encrypts and
/// decrypts from then on. rustls's state is consumed, so a failure here
/// leaves the connection unusable (it is closed by the caller).
pub(super) fn install(tcp: &TcpStream, conn: UnbufferedServerConnection) -> io::Result<()> {
    let version = kernel_version(conn.protocol_version())
        .ok_or_else(|| io::Error::other("protocol version not known to kTLS"))?;
    // The returned `KernelConnection` could follow key updates through
    // control messages; it is dropped, so a peer's key update ends the
    // connection (see `Io::read_kernel`) and nothing of rustls stays.
    let (secrets, _) = conn
        .dangerous_into_kernel_connection()
        .map_err(io::Error::other)?;
    let (tx_seq, tx) = secrets.tx;
    let (rx_seq, rx) = secrets.rx;
    setsockopt(tcp, TcpTlsTx, &crypto_info(version, tx_seq, &tx)?)?;
    setsockopt(tcp, TcpTlsRx, &crypto_info(version, rx_seq, &rx)?)?;
    HANDED_OVER.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn kernel_version(version: Option<ProtocolVersion>) -> Option<u16> {
    match version? {
        ProtocolVersion::TLSv1_2 => Some(libc::TLS_1_2_VERSION),
        ProtocolVersion::TLSv1_3 => Some(libc::TLS_1_3_VERSION),
        _ => None,
    }
}

/// The kernel's form of one direction's secrets. AES-GCM splits rustls's
/// 12-byte IV into a 4-byte salt and 8 bytes of nonce; ChaCha20-Poly1305
/// takes all 12 as its IV.
fn crypto_info(
    version: u16,
    seq: u64,
    secrets: &ConnectionTrafficSecrets,
) -> io::Result<TlsCryptoInfo> {
    let bad = |_| io::Error::other("key or IV of unexpected length");
    let rec_seq = seq.to_be_bytes();
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
            let (salt, nonce) = iv.as_ref().split_at(4);
            Ok(TlsCryptoInfo::Aes128Gcm(
                libc::tls12_crypto_info_aes_gcm_128 {
                    info: libc::tls_crypto_info {
                        version,
                        cipher_type: libc::TLS_CIPHER_AES_GCM_128,
                    },
                    iv: nonce.try_into().map_err(bad)?,
                    key: key.as_ref().try_into().map_err(bad)?,
                    salt: salt.try_into().map_err(bad)?,
                    rec_seq,
                },
            ))
        }
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            let (salt, nonce) = iv.as_ref().split_at(4);
            Ok(TlsCryptoInfo::Aes256Gcm(
                libc::tls12_crypto_info_aes_gcm_256 {
                    info: libc::tls_crypto_info {
                        version,
                        cipher_type: libc::TLS_CIPHER_AES_GCM_256,
                    },
                    iv: nonce.try_into().map_err(bad)?,
                    key: key.as_ref().try_into().map_err(bad)?,
                    salt: salt.try_into().map_err(bad)?,
                    rec_seq,
                },
            ))
        }
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok(
            TlsCryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                info: libc::tls_crypto_info {
                    version,
                    cipher_type: libc::TLS_CIPHER_CHACHA20_POLY1305,
                },
                iv: iv.as_ref().try_into().map_err(bad)?,
                key: key.as_ref().try_into().map_err(bad)?,
                salt: [],
                rec_seq,
            }),
        ),
        _ => Err(io::Error::other("cipher suite not supported by kTLS")),
    }
}
