//! The TLS record layer of an established connection, kept by us instead
//! of rustls so that an idle connection holds its keys and nothing else.
//!
//! Owns: once rustls has completed a handshake, each direction's AEAD key,
//! IV, sequence number and (TLS 1.3) traffic secret; sealing plaintext and
//! alerts into records, opening records in place; what the peer may say
//! after the handshake (data, alerts, TLS 1.3 key updates, a TLS 1.2
//! renegotiation attempt) and the answers the protocol asks for; the
//! confidentiality limit of the negotiated suite; capturing the TLS 1.3
//! traffic secrets from rustls's key-log hook while it runs the handshake.
//! Must never: touch a socket or allocate per record (records are opened
//! in the caller's buffer and sealed into the caller's `Vec`); keep an
//! expanded key per connection (only the loop's bounded cache holds them,
//! so an idle connection holds raw key bytes only); hand out plaintext of a
//! record that failed authentication; accept a record after a fatal one;
//! leave raw keys, IVs or traffic secrets in freed memory (they are zeroed
//! on drop; ring's expanded keys are not, as with rustls); log a secret.
//!
//! # How it takes over from rustls
//!
//! rustls runs the handshake (certificates, key exchange, resumption,
//! tickets). Once it is done and nothing is buffered either way, the
//! connection is turned into rustls's kernel form
//! (`dangerous_into_kernel_connection`), which yields both directions'
//! keys, IVs and sequence numbers, and is then dropped: it would keep about
//! 800 bytes per connection only to follow TLS 1.3 key updates. Those are
//! followed here instead, from the traffic secrets rustls reports through
//! the config's key-log hook during the handshake ([`CaptureSecrets`], which
//! keeps them in memory of this thread only until the connection takes
//! them; nothing is ever written anywhere). The keys derived from a captured
//! secret are checked against the ones rustls hands over before they are
//! used, so a key schedule mistake here cannot go unnoticed: it refuses the
//! connection instead.
//!
//! # Per record
//!
//! An expanded AES key (ring's key schedule and GHASH table, 544 bytes)
//! takes about 180 ns to make (measured with ring on this machine). It is
//! made in the loop's cache of [`KEY_CACHE_SLOTS`], where two slots belong
//! to each connection and are shared with the connections 128 apart: a
//! connection that talks often finds its keys there, one among thousands
//! that each get a broadcast pays the 180 ns per write, and an idle one
//! costs nothing.
//!
//! # Not supported (each answered with a fatal alert)
//!
//! - A post-handshake handshake message split across records: only a TLS
//!   1.3 key update may come after the handshake, and no known client
//!   fragments its five bytes.
//! - TLS 1.2 renegotiation: refused with a `no_renegotiation` warning the
//!   first time (as rustls does), a fatal alert the second.

use std::cell::RefCell;
use std::io;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use rustls::server::UnbufferedServerConnection;
use rustls::{
    CipherSuite, ConnectionTrafficSecrets, KeyLog, ProtocolVersion, SupportedCipherSuite,
};
use zeroize::Zeroize;

/// The largest plaintext of one record (2^14); also what we put in each
/// record we send, so a large write costs one AEAD call and 22-29 bytes of
/// overhead per 16 KiB.
pub(super) const MAX_FRAGMENT_LEN: usize = 16 * 1024;

/// Record content types.
const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;

/// Alert levels and the descriptions used here (RFC 8446 6, RFC 5246 7.2).
const WARNING: u8 = 1;
const FATAL: u8 = 2;
pub(super) const CLOSE_NOTIFY: u8 = 0;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const ILLEGAL_PARAMETER: u8 = 47;
const DECODE_ERROR: u8 = 50;
const USER_CANCELED: u8 = 90;
const NO_RENEGOTIATION: u8 = 100;

/// Handshake message types seen after the handshake.
const CLIENT_HELLO: u8 = 1;
const KEY_UPDATE: u8 = 24;

/// Record header: type, legacy version 3.3, length.
const HEADER_LEN: usize = 5;
const TAG_LEN: usize = 16;
/// TLS 1.2 AES-GCM sends 8 bytes of its nonce in each record.
const EXPLICIT_NONCE_LEN: usize = 8;
/// Ciphertext of one record may exceed its plaintext by this much (RFC 8446
/// 5.2; RFC 5246 6.2.3 allows 2,048).
const MAX_EXPANSION_TLS13: usize = 256;
const MAX_EXPANSION_TLS12: usize = 2048;

/// Key updates a TLS 1.3 peer may ask for between two data records, and
/// warning alerts a TLS 1.2 peer may send between two (rustls's limits).
const KEY_UPDATES_ALLOWED: u8 = 32;
const WARNINGS_ALLOWED: u8 = 4;

/// The key-log labels of the TLS 1.3 application traffic secrets.
const CLIENT_TRAFFIC_SECRET_0: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_TRAFFIC_SECRET_0: &str = "SERVER_TRAFFIC_SECRET_0";

/// The longest hash of a supported suite (SHA-384).
const MAX_SECRET_LEN: usize = 48;

/// The largest record a peer may send: header, 2^14 bytes of plaintext and
/// up to 2,048 bytes of expansion (TLS 1.2; TLS 1.3 allows 256). An
/// incomplete record is never longer; longer ones are refused from their
/// header, before they are read whole.
pub(super) const MAX_RECORD_LEN: usize = HEADER_LEN + MAX_FRAGMENT_LEN + MAX_EXPANSION_TLS12;

thread_local! {
    /// Traffic secrets reported by rustls during the handshake being
    /// processed on this thread, until its connection takes them.
    static CAPTURED: RefCell<Option<Box<Captured>>> = const { RefCell::new(None) };
}

/// The config's key-log hook: keeps the two TLS 1.3 application traffic
/// secrets of the handshake rustls is running, for [`take_captured`].
#[derive(Debug)]
pub(super) struct CaptureSecrets;

impl KeyLog for CaptureSecrets {
    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_TRAFFIC_SECRET_0 || label == SERVER_TRAFFIC_SECRET_0
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let Some(secret) = Secret::new(secret) else {
            return;
        };
        CAPTURED.with_borrow_mut(|slot| {
            let captured = slot.get_or_insert_with(Box::default);
            match label {
                CLIENT_TRAFFIC_SECRET_0 => captured.client = Some(secret),
                SERVER_TRAFFIC_SECRET_0 => captured.server = Some(secret),
                _ => {}
            }
        });
    }
}

/// Adds what rustls reported since the last call on this thread to `kept`:
/// the secrets of the connection whose records it just processed (rustls
/// may report the two in different rounds). Call after each round of
/// processing, so secrets never wait for another connection.
pub(super) fn keep_captured(kept: &mut Option<Box<Captured>>) {
    let Some(new) = CAPTURED.with_borrow_mut(Option::take) else {
        return;
    };
    match kept {
        None => *kept = Some(new),
        Some(kept) => {
            let Captured { client, server } = *new;
            if client.is_some() {
                kept.client = client;
            }
            if server.is_some() {
                kept.server = server;
            }
        }
    }
}

/// The TLS 1.3 application traffic secrets of one handshake.
#[derive(Default)]
pub(super) struct Captured {
    client: Option<Secret>,
    server: Option<Secret>,
}

impl std::fmt::Debug for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Captured(..)")
    }
}

/// A traffic secret: a hash's length of bytes.
#[derive(Clone)]
struct Secret {
    bytes: [u8; MAX_SECRET_LEN],
    len: u8,
}

impl Secret {
    fn new(bytes: &[u8]) -> Option<Secret> {
        let mut secret = Secret {
            bytes: [0; MAX_SECRET_LEN],
            len: u8::try_from(bytes.len()).ok()?,
        };
        secret.bytes.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(secret)
    }

    fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// The AEAD of the negotiated suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Cipher {
    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Cipher::Aes128Gcm => &aead::AES_128_GCM,
            Cipher::Aes256Gcm => &aead::AES_256_GCM,
            Cipher::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    fn key_len(self) -> usize {
        self.algorithm().key_len()
    }

    /// The TLS 1.3 suite's hash, for its key schedule (AES-256-GCM goes
    /// with SHA-384, the others with SHA-256).
    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Cipher::Aes256Gcm => hkdf::HKDF_SHA384,
            Cipher::Aes128Gcm | Cipher::Chacha20Poly1305 => hkdf::HKDF_SHA256,
        }
    }

    fn of(secrets: &ConnectionTrafficSecrets) -> Option<(Cipher, &[u8], &[u8])> {
        match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                Some((Cipher::Aes128Gcm, key.as_ref(), iv.as_ref()))
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                Some((Cipher::Aes256Gcm, key.as_ref(), iv.as_ref()))
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                Some((Cipher::Chacha20Poly1305, key.as_ref(), iv.as_ref()))
            }
            _ => None,
        }
    }
}

/// One direction's protection: what sealing or opening the next record
/// needs, and (TLS 1.3) the secret the next key update derives from.
struct Direction {
    key: [u8; 32],
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
    /// TLS 1.3 only (empty for TLS 1.2).
    secret: Secret,
}

impl Drop for Direction {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

impl Direction {
    /// From what rustls handed over (TLS 1.2, or TLS 1.3 before checking).
    fn from_parts(key: &[u8], iv: &[u8], seq: u64) -> Option<Direction> {
        let mut dir = Direction {
            key: [0; 32],
            iv: iv.try_into().ok()?,
            seq,
            secret: Secret {
                bytes: [0; MAX_SECRET_LEN],
                len: 0,
            },
        };
        dir.key.get_mut(..key.len())?.copy_from_slice(key);
        Some(dir)
    }

    /// TLS 1.3: the key and IV of `secret` (RFC 8446 7.3).
    fn from_secret(cipher: Cipher, secret: Secret, seq: u64) -> Option<Direction> {
        let mut dir = Direction {
            key: [0; 32],
            iv: [0; aead::NONCE_LEN],
            seq,
            secret,
        };
        let prk = hkdf::Prk::new_less_safe(cipher.hkdf(), dir.secret.as_bytes());
        expand_label(&prk, b"key", dir.key.get_mut(..cipher.key_len())?)?;
        expand_label(&prk, b"iv", &mut dir.iv)?;
        Some(dir)
    }

    /// TLS 1.3 key update: the next generation's secret, key and IV, from
    /// sequence number 0 (RFC 8446 7.2).
    fn update(&mut self, cipher: Cipher) -> Option<()> {
        let prk = hkdf::Prk::new_less_safe(cipher.hkdf(), self.secret.as_bytes());
        let mut next = self.secret.clone();
        let len = usize::from(next.len);
        expand_label(&prk, b"traffic upd", next.bytes.get_mut(..len)?)?;
        *self = Direction::from_secret(cipher, next, 0)?;
        Some(())
    }

    fn same_keys(&self, cipher: Cipher, key: &[u8], iv: &[u8]) -> bool {
        self.key.get(..cipher.key_len()) == Some(key) && self.iv.as_slice() == iv
    }

    /// The per-record nonce: the IV with the sequence number XORed into its
    /// last eight bytes (TLS 1.3, and TLS 1.2 with ChaCha20-Poly1305; TLS
    /// 1.2 AES-GCM sends the last eight of it, as rustls does).
    fn nonce(&self) -> [u8; aead::NONCE_LEN] {
        let mut nonce = self.iv;
        for (n, s) in nonce.iter_mut().skip(4).zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    fn raw_key(&self, cipher: Cipher) -> &[u8] {
        self.key.get(..cipher.key_len()).unwrap_or_default()
    }
}

/// Slots in the loop's cache of expanded keys: the send and receive keys
/// of 128 connections. A connection keeps only its raw keys, and an
/// expanded key (544 bytes with ring: the AES key schedule and GHASH
/// table) costs about 180 ns to make, once per read or write of a
/// connection with traffic; the cache keeps the last ones made, so that
/// connections that talk often (an echo, a chat) make them rarely, while
/// the whole cache stays about 150 KB however many connections there are.
const KEY_CACHE_SLOTS: usize = 256;

/// An expanded key and the raw key it was made from.
struct Expanded {
    cipher: Cipher,
    raw: [u8; 32],
    key: LessSafeKey,
}

thread_local! {
    /// The loop's cache of expanded keys. Each connection has two slots
    /// ([`Records::cache_slot`] and the next), handed out in turn, shared
    /// with the connections 128 apart; a slot is checked against the raw
    /// key before use, so sharing costs time, never correctness.
    static EXPANDED: RefCell<Vec<Option<Expanded>>> = const { RefCell::new(Vec::new()) };
    /// The next connection's first slot.
    static NEXT_SLOT: std::cell::Cell<u16> = const { std::cell::Cell::new(0) };
}

/// Runs `f` with `dir`'s expanded key, from cache slot `slot` or made
/// there.
fn with_expanded<R>(
    slot: u16,
    cipher: Cipher,
    dir: &Direction,
    f: impl FnOnce(&LessSafeKey) -> R,
) -> io::Result<R> {
    let raw = dir.raw_key(cipher);
    EXPANDED.with_borrow_mut(|cache| {
        if cache.is_empty() {
            cache.resize_with(KEY_CACHE_SLOTS, || None);
        }
        let entry = cache
            .get_mut(usize::from(slot) % KEY_CACHE_SLOTS)
            .ok_or_else(|| io::Error::other("TLS key cache slot out of range"))?;
        let cached = entry
            .as_ref()
            .is_some_and(|e| e.cipher == cipher && e.raw.get(..raw.len()) == Some(raw));
        if !cached {
            let key = UnboundKey::new(cipher.algorithm(), raw)
                .map(LessSafeKey::new)
                .map_err(|_| io::Error::other("TLS key of the wrong length"))?;
            *entry = Some(Expanded {
                cipher,
                raw: dir.key,
                key,
            });
        }
        match entry {
            Some(e) => Ok(f(&e.key)),
            None => Err(io::Error::other("TLS key cache slot empty")),
        }
    })
}

/// Forgets the expanded keys made from `dirs` (a connection that ends
/// leaves none of its keys behind).
fn forget_expanded(slot: u16, dirs: [&Direction; 2]) {
    EXPANDED.with_borrow_mut(|cache| {
        for (i, dir) in dirs.into_iter().enumerate() {
            let Some(entry) = cache.get_mut((usize::from(slot) + i) % KEY_CACHE_SLOTS) else {
                continue;
            };
            if entry.as_ref().is_some_and(|e| e.raw == dir.key) {
                if let Some(e) = entry.as_mut() {
                    e.raw.zeroize();
                }
                *entry = None;
            }
        }
    });
}

/// HKDF-Expand-Label(secret, label, "", out.len()) (RFC 8446 7.1).
fn expand_label(prk: &hkdf::Prk, label: &[u8], out: &mut [u8]) -> Option<()> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let length = u16::try_from(out.len()).ok()?.to_be_bytes();
    let label_len = [u8::try_from(6 + label.len()).ok()?];
    let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label, &[0]];
    prk.expand(&info, Len(out.len())).ok()?.fill(out).ok()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    Tls12,
    Tls13,
}

/// An established connection's record layer.
pub(super) struct Records {
    version: Version,
    cipher: Cipher,
    tx: Direction,
    rx: Direction,
    /// Records we may seal under one key: then a TLS 1.3 key update, or
    /// the end of a TLS 1.2 connection.
    limit: u64,
    key_updates_left: u8,
    warnings_left: u8,
    /// A TLS 1.2 renegotiation was refused once already.
    renegotiation_refused: bool,
    /// This connection's first slot in the loop's cache of expanded keys
    /// (receive; send is the next).
    cache_slot: u16,
}

impl Drop for Records {
    fn drop(&mut self) {
        forget_expanded(self.cache_slot, [&self.rx, &self.tx]);
    }
}

/// Hands out cache slots in turn, two per connection.
fn next_cache_slot() -> u16 {
    NEXT_SLOT.with(|next| {
        let slot = next.get();
        next.set(slot.wrapping_add(2) % KEY_CACHE_SLOTS as u16);
        slot
    })
}

/// Whether the negotiated suite's AEAD is AES-GCM or ChaCha20-Poly1305
/// (all the ring provider offers; also what the kernel's TLS takes).
pub(super) fn known_suite(conn: &UnbufferedServerConnection) -> bool {
    matches!(
        conn.negotiated_cipher_suite().map(|s| s.suite()),
        Some(
            CipherSuite::TLS13_AES_128_GCM_SHA256
                | CipherSuite::TLS13_AES_256_GCM_SHA384
                | CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
                | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        )
    )
}

/// Why a connection stays with rustls's record layer, judged before
/// anything irreversible; `None` when it can be taken over.
pub(super) fn unsuitable(
    conn: &UnbufferedServerConnection,
    captured: Option<&Captured>,
) -> Option<&'static str> {
    if !known_suite(conn) {
        return Some("cipher suite unknown");
    }
    match (conn.protocol_version(), conn.negotiated_cipher_suite()) {
        (Some(ProtocolVersion::TLSv1_2), Some(SupportedCipherSuite::Tls12(_))) => None,
        (Some(ProtocolVersion::TLSv1_3), Some(SupportedCipherSuite::Tls13(_))) => match captured {
            Some(Captured {
                client: Some(_),
                server: Some(_),
            }) => None,
            _ => Some("the traffic secrets were not reported"),
        },
        _ => Some("protocol version or cipher suite unknown"),
    }
}

impl Records {
    /// Takes the record layer from rustls, whose handshake is done and
    /// which holds no record either way (see [`unsuitable`] first). rustls's
    /// state is consumed: on an error the connection is lost.
    pub(super) fn take_over(
        conn: UnbufferedServerConnection,
        captured: Option<Box<Captured>>,
    ) -> io::Result<Records> {
        let fail = |why: &str| io::Error::other(format!("taking over the TLS records: {why}"));
        let limit = match conn.negotiated_cipher_suite() {
            Some(SupportedCipherSuite::Tls13(s)) => s.common.confidentiality_limit,
            Some(SupportedCipherSuite::Tls12(s)) => s.common.confidentiality_limit,
            None => return Err(fail("no cipher suite")),
        };
        let tls13 = conn.protocol_version() == Some(ProtocolVersion::TLSv1_3);
        let (secrets, _kernel) = conn
            .dangerous_into_kernel_connection()
            .map_err(io::Error::other)?;
        let (tx_seq, tx) = &secrets.tx;
        let (rx_seq, rx) = &secrets.rx;
        let (cipher, tx_key, tx_iv) = Cipher::of(tx).ok_or_else(|| fail("unknown cipher"))?;
        let (_, rx_key, rx_iv) = Cipher::of(rx).ok_or_else(|| fail("unknown cipher"))?;
        let (version, tx, rx) = match captured.filter(|_| tls13) {
            None if tls13 => return Err(fail("traffic secrets missing")),
            None => (
                Version::Tls12,
                Direction::from_parts(tx_key, tx_iv, *tx_seq),
                Direction::from_parts(rx_key, rx_iv, *rx_seq),
            ),
            Some(captured) => {
                let Captured { client, server } = *captured;
                let (Some(client), Some(server)) = (client, server) else {
                    return Err(fail("traffic secrets missing"));
                };
                (
                    Version::Tls13,
                    catch_up(cipher, server, *tx_seq, tx_key, tx_iv),
                    catch_up(cipher, client, *rx_seq, rx_key, rx_iv),
                )
            }
        };
        let (Some(tx), Some(rx)) = (tx, rx) else {
            return Err(fail("derived keys differ from rustls's"));
        };
        Ok(Records {
            version,
            cipher,
            tx,
            rx,
            limit,
            key_updates_left: KEY_UPDATES_ALLOWED,
            warnings_left: WARNINGS_ALLOWED,
            renegotiation_refused: false,
            cache_slot: next_cache_slot(),
        })
    }

    /// The keys for one read or write call.
    pub(super) fn keys(&mut self) -> Keys<'_> {
        Keys { records: self }
    }
}

/// The direction whose keys match rustls's `key` and `iv`: `secret`'s own,
/// or those after the key updates rustls followed before handing over.
fn catch_up(cipher: Cipher, secret: Secret, seq: u64, key: &[u8], iv: &[u8]) -> Option<Direction> {
    let mut dir = Direction::from_secret(cipher, secret, seq)?;
    for _ in 0..=KEY_UPDATES_ALLOWED {
        if dir.same_keys(cipher, key, iv) {
            dir.seq = seq;
            return Some(dir);
        }
        dir.update(cipher)?;
    }
    None
}

/// What a record from the peer amounted to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Input<'a> {
    /// Application data (possibly empty).
    Data(&'a [u8]),
    /// Nothing for the caller: an answered key update, a warning.
    Nothing,
    /// close_notify: the peer's stream ended.
    Closed,
}

/// A record that ends the connection: the alert to send (none when the
/// peer sent a fatal one), and the error for the caller.
#[derive(Debug)]
pub(super) struct Fatal {
    pub(super) alert: Option<u8>,
    pub(super) error: io::Error,
}

fn fatal(alert: u8, why: &str) -> Fatal {
    Fatal {
        alert: Some(alert),
        error: io::Error::new(io::ErrorKind::InvalidData, why.to_owned()),
    }
}

/// A handshake message the peer may not send once the handshake is done.
fn unexpected_handshake() -> Fatal {
    fatal(
        UNEXPECTED_MESSAGE,
        "unexpected TLS handshake message after the handshake",
    )
}

/// The length of the whole record at the front of `buf`: `None` while its
/// header or body is incomplete, an error for a length no peer may send.
pub(super) fn record_len(buf: &[u8]) -> Result<Option<usize>, Fatal> {
    let Some(&[_, _, _, hi, lo]) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = HEADER_LEN + usize::from(u16::from_be_bytes([hi, lo]));
    if len > MAX_RECORD_LEN {
        return Err(fatal(RECORD_OVERFLOW, "TLS record longer than allowed"));
    }
    Ok((buf.len() >= len).then_some(len))
}

/// The record layer for the span of one read or write.
pub(super) struct Keys<'r> {
    records: &'r mut Records,
}

impl Keys<'_> {
    /// Opens one whole record (as measured by [`record_len`]) in place and
    /// acts on it. Answers the protocol asks for (a key update) are sealed
    /// onto `replies`.
    pub(super) fn open<'a>(
        &mut self,
        record: &'a mut [u8],
        replies: &mut Vec<u8>,
    ) -> Result<Input<'a>, Fatal> {
        let (typ, content) = self.decrypt(record)?;
        if content.len() > MAX_FRAGMENT_LEN {
            return Err(fatal(RECORD_OVERFLOW, "TLS record longer than allowed"));
        }
        let tls13 = self.records.version == Version::Tls13;
        match typ {
            APPLICATION_DATA => {
                self.records.key_updates_left = KEY_UPDATES_ALLOWED;
                self.records.warnings_left = WARNINGS_ALLOWED;
                Ok(Input::Data(content))
            }
            ALERT => self.on_alert(content),
            HANDSHAKE if tls13 => self.on_key_update(content, replies),
            HANDSHAKE => self.on_renegotiation(content, replies),
            _ => Err(fatal(
                UNEXPECTED_MESSAGE,
                "unexpected TLS record type after the handshake",
            )),
        }
    }

    /// Authenticates and decrypts; returns the content type and content.
    fn decrypt<'a>(&mut self, record: &'a mut [u8]) -> Result<(u8, &'a [u8]), Fatal> {
        let records = &mut *self.records;
        let (cipher, slot) = (records.cipher, records.cache_slot);
        let bad_mac = || fatal(BAD_RECORD_MAC, "TLS record failed authentication");
        let (header, body) = record
            .split_at_mut_checked(HEADER_LEN)
            .ok_or_else(bad_mac)?;
        let outer = header.first().copied().unwrap_or_default();
        let seq = records.rx.seq;
        match records.version {
            Version::Tls13 => {
                if outer != APPLICATION_DATA {
                    return Err(fatal(
                        UNEXPECTED_MESSAGE,
                        "unprotected TLS record after the handshake",
                    ));
                }
                if body.len() > MAX_FRAGMENT_LEN + MAX_EXPANSION_TLS13 {
                    return Err(fatal(RECORD_OVERFLOW, "TLS record longer than allowed"));
                }
                let aad: [u8; HEADER_LEN] = header.try_into().map_err(|_| bad_mac())?;
                let nonce = Nonce::assume_unique_for_key(records.rx.nonce());
                let plain = with_expanded(slot, cipher, &records.rx, |key| {
                    key.open_in_place(nonce, Aad::from(aad), body)
                })
                .map_err(|error| Fatal {
                    alert: Some(BAD_RECORD_MAC),
                    error,
                })?
                .map_err(|_| bad_mac())?;
                records.rx.seq = seq.wrapping_add(1);
                // Strip the zero padding; the last non-zero byte is the type.
                let end = plain.iter().rposition(|&b| b != 0).ok_or_else(|| {
                    fatal(UNEXPECTED_MESSAGE, "TLS record without a content type")
                })?;
                let (content, typ) = plain.split_at(end);
                Ok((typ.first().copied().unwrap_or_default(), content))
            }
            Version::Tls12 => {
                if !matches!(outer, ALERT | HANDSHAKE | APPLICATION_DATA) {
                    let why = if outer == CHANGE_CIPHER_SPEC {
                        "change_cipher_spec after the handshake"
                    } else {
                        "unknown TLS record type"
                    };
                    return Err(fatal(UNEXPECTED_MESSAGE, why));
                }
                let (nonce, sealed) = if records.cipher == Cipher::Chacha20Poly1305 {
                    (records.rx.nonce(), body)
                } else {
                    let (explicit, sealed) = body
                        .split_at_mut_checked(EXPLICIT_NONCE_LEN)
                        .ok_or_else(bad_mac)?;
                    let mut nonce = records.rx.iv;
                    for (n, e) in nonce.iter_mut().skip(4).zip(explicit.iter()) {
                        *n = *e;
                    }
                    (nonce, sealed)
                };
                let len = sealed.len().checked_sub(TAG_LEN).ok_or_else(bad_mac)?;
                let aad = tls12_aad(seq, outer, len).ok_or_else(bad_mac)?;
                let nonce = Nonce::assume_unique_for_key(nonce);
                let plain = with_expanded(slot, cipher, &records.rx, |key| {
                    key.open_in_place(nonce, Aad::from(aad), sealed)
                })
                .map_err(|error| Fatal {
                    alert: Some(BAD_RECORD_MAC),
                    error,
                })?
                .map_err(|_| bad_mac())?;
                records.rx.seq = seq.wrapping_add(1);
                Ok((outer, plain))
            }
        }
    }

    fn on_alert<'a>(&mut self, content: &[u8]) -> Result<Input<'a>, Fatal> {
        let &[level, description] = content else {
            return Err(fatal(DECODE_ERROR, "malformed TLS alert"));
        };
        if level != WARNING && level != FATAL {
            return Err(fatal(ILLEGAL_PARAMETER, "TLS alert of an unknown level"));
        }
        if description == CLOSE_NOTIFY {
            return Ok(Input::Closed);
        }
        if level == FATAL {
            return Err(Fatal {
                alert: None,
                error: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the peer sent TLS alert {description}"),
                ),
            });
        }
        // TLS 1.3 outlaws warnings but user_canceled (RFC 8446 6.1).
        if self.records.version == Version::Tls13 && description != USER_CANCELED {
            return Err(fatal(DECODE_ERROR, "TLS 1.3 warning alert"));
        }
        self.records.warnings_left = self
            .records
            .warnings_left
            .checked_sub(1)
            .ok_or_else(|| fatal(UNEXPECTED_MESSAGE, "too many TLS warning alerts"))?;
        Ok(Input::Nothing)
    }

    /// TLS 1.3: the only handshake message a client may send after the
    /// handshake is a key update, alone at the end of its record.
    fn on_key_update<'a>(
        &mut self,
        content: &[u8],
        replies: &mut Vec<u8>,
    ) -> Result<Input<'a>, Fatal> {
        let request = match *content {
            [KEY_UPDATE, 0, 0, 1, request] => request,
            [KEY_UPDATE, ..] => {
                return Err(fatal(
                    UNEXPECTED_MESSAGE,
                    "malformed or split TLS key update, or data after it in its record",
                ));
            }
            _ => return Err(unexpected_handshake()),
        };
        if request > 1 {
            return Err(fatal(
                ILLEGAL_PARAMETER,
                "TLS key update of an unknown kind",
            ));
        }
        let records = &mut *self.records;
        records.key_updates_left = records
            .key_updates_left
            .checked_sub(1)
            .ok_or_else(|| fatal(UNEXPECTED_MESSAGE, "too many TLS key updates"))?;
        records
            .rx
            .update(records.cipher)
            .ok_or_else(|| fatal(DECODE_ERROR, "TLS key update failed"))?;
        if request == 1 {
            // Ours goes before any later record (RFC 8446 4.6.3).
            self.update_tx(replies)
                .map_err(|error| Fatal { alert: None, error })?;
        }
        Ok(Input::Nothing)
    }

    /// TLS 1.2: a ClientHello after the handshake asks to renegotiate.
    fn on_renegotiation<'a>(
        &mut self,
        content: &[u8],
        replies: &mut Vec<u8>,
    ) -> Result<Input<'a>, Fatal> {
        if content.first() != Some(&CLIENT_HELLO) || self.records.renegotiation_refused {
            return Err(unexpected_handshake());
        }
        self.records.renegotiation_refused = true;
        self.seal_one(ALERT, &[WARNING, NO_RENEGOTIATION], replies)
            .map_err(|error| Fatal { alert: None, error })?;
        Ok(Input::Nothing)
    }

    /// Seals `plain` into records of at most [`MAX_FRAGMENT_LEN`] appended
    /// to `out`.
    pub(super) fn seal_data(&mut self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        for chunk in plain.chunks(MAX_FRAGMENT_LEN) {
            self.seal_one(APPLICATION_DATA, chunk, out)?;
        }
        Ok(())
    }

    /// Seals an alert: close_notify as a warning, anything else fatal.
    pub(super) fn seal_alert(&mut self, description: u8, out: &mut Vec<u8>) -> io::Result<()> {
        let level = if description == CLOSE_NOTIFY {
            WARNING
        } else {
            FATAL
        };
        self.seal_one(ALERT, &[level, description], out)
    }

    /// Sends a key update of ours (not asking for the peer's) under the
    /// current key, then switches to the next one.
    fn update_tx(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        self.seal_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out)?;
        let records = &mut *self.records;
        records
            .tx
            .update(records.cipher)
            .ok_or_else(|| io::Error::other("TLS key update failed"))?;
        Ok(())
    }

    /// Seals one record, first moving to a fresh key (TLS 1.3) or giving up
    /// (TLS 1.2) once the suite's confidentiality limit is near.
    fn seal_one(&mut self, typ: u8, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        if self.records.tx.seq >= self.records.limit.saturating_sub(1) {
            if self.records.version == Version::Tls12 {
                return Err(io::Error::other(
                    "TLS 1.2 connection reached its cipher's record limit",
                ));
            }
            self.update_tx(out)?;
        }
        self.seal_record(typ, plain, out)
    }

    fn seal_record(&mut self, typ: u8, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let records = &mut *self.records;
        let seq = records.tx.seq;
        let nonce = records.tx.nonce();
        let too_long = || io::Error::other("TLS record too long");
        let start = out.len();
        // Additional data: the record header (TLS 1.3) or TLS 1.2's 13 bytes.
        let mut aad = [0; 13];
        let (outer, explicit, body_len, aad_len) = match records.version {
            Version::Tls13 => {
                let len = plain.len() + 1 + TAG_LEN;
                let head = header(APPLICATION_DATA, len).ok_or_else(too_long)?;
                if let Some(dst) = aad.get_mut(..HEADER_LEN) {
                    dst.copy_from_slice(&head);
                }
                (APPLICATION_DATA, 0, len, HEADER_LEN)
            }
            Version::Tls12 => {
                let explicit = if records.cipher == Cipher::Chacha20Poly1305 {
                    0
                } else {
                    EXPLICIT_NONCE_LEN
                };
                aad = tls12_aad(seq, typ, plain.len()).ok_or_else(too_long)?;
                (typ, explicit, explicit + plain.len() + TAG_LEN, aad.len())
            }
        };
        let head = header(outer, body_len).ok_or_else(too_long)?;
        out.extend_from_slice(&head);
        out.extend_from_slice(nonce.get(aead::NONCE_LEN - explicit..).unwrap_or_default());
        let sealed_from = out.len();
        out.extend_from_slice(plain);
        if records.version == Version::Tls13 {
            out.push(typ);
        }
        let Some(in_out) = out.get_mut(sealed_from..) else {
            return Err(too_long());
        };
        let tag = with_expanded(records.cache_slot + 1, records.cipher, &records.tx, |key| {
            key.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.get(..aad_len).unwrap_or_default()),
                in_out,
            )
        });
        let tag = match tag {
            Ok(Ok(tag)) => tag,
            Ok(Err(_)) => {
                out.truncate(start);
                return Err(io::Error::other("TLS record could not be sealed"));
            }
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        };
        out.extend_from_slice(tag.as_ref());
        records.tx.seq = seq.wrapping_add(1);
        Ok(())
    }
}

fn header(typ: u8, len: usize) -> Option<[u8; HEADER_LEN]> {
    let [hi, lo] = u16::try_from(len).ok()?.to_be_bytes();
    Some([typ, 3, 3, hi, lo])
}

/// TLS 1.2's additional data: sequence number, type, version, length.
fn tls12_aad(seq: u64, typ: u8, len: usize) -> Option<[u8; 13]> {
    let mut aad = [0; 13];
    let [s0, s1, s2, s3, s4, s5, s6, s7] = seq.to_be_bytes();
    let [hi, lo] = u16::try_from(len).ok()?.to_be_bytes();
    aad.copy_from_slice(&[s0, s1, s2, s3, s4, s5, s6, s7, typ, 3, 3, hi, lo]);
    Some(aad)
}

#[cfg(test)]
mod tests;
