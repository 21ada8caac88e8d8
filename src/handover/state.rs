//! The state a process hands to its successor, as bytes: a versioned
//! envelope around what the server exports.
//!
//! ```text
//! magic "wshub-handover\n" | version u32 LE | farewells length u32 LE | farewells | body
//! ```
//!
//! The version names the body's format: a binary reads a body only when the
//! version is its own ([`VERSION`]). The farewell table in front of it is
//! the one part every version reads the same way (its format never
//! changes): for each connection, the bytes that end it the ordinary way
//! (what it had not yet been sent, then a close frame 1012 "service
//! restart", or the end of an event stream). A binary that refuses the body
//! still says goodbye properly with it: its clients reconnect as after an
//! ordinary restart, instead of finding their connection cut mid-frame.
//!
//! Owns: the envelope, the version, and encoding a body with `postcard`.
//! Must never: trust the bytes it decodes (they come from a file or
//! another process): every length is checked before it is used, and
//! decoding fails with a message rather than a panic.

use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Opens every state.
const MAGIC: &[u8] = b"wshub-handover\n";
/// The body format this binary writes and reads. Bump it with any change
/// to what the server exports; an old binary then refuses the new state
/// and falls back to the ordinary shutdown, and so does a new one.
pub const VERSION: u32 = 1;
/// Read by the new process, for tests of the fallback: pretend to speak
/// this state version instead of [`VERSION`].
pub const VERSION_ENV: &str = "WSHUB_HANDOVER_STATE_VERSION";

/// How one connection ends when its state cannot be taken over. Its
/// format is part of the envelope: it never changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Farewell {
    /// The socket's own address and its peer's: how a descriptor passed
    /// without order (the service manager's store) is matched to its entry.
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// Written before the socket is closed; may be empty.
    pub bytes: Vec<u8>,
}

/// What a state says before its body.
#[derive(Debug)]
pub struct Envelope<'a> {
    pub version: u32,
    pub farewells: Vec<Farewell>,
    /// The body, in [`VERSION`]'s format when `version` is ours.
    pub body: &'a [u8],
}

/// Why a state cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("not a wshub handover state")]
    NotAState,
    #[error("state version {0} is not this binary's ({VERSION})")]
    Version(u32),
    #[error("the state is damaged: {0}")]
    Damaged(String),
}

/// The version this process speaks: [`VERSION`], unless [`VERSION_ENV`]
/// says otherwise.
pub fn spoken_version() -> u32 {
    std::env::var(VERSION_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(VERSION)
}

/// Encodes `body` with the farewell table in front.
pub fn encode<T: Serialize>(farewells: &[Farewell], body: &T) -> Result<Vec<u8>, StateError> {
    let table = postcard::to_allocvec(farewells).map_err(|e| StateError::Damaged(e.to_string()))?;
    let table_len = u32::try_from(table.len())
        .map_err(|_| StateError::Damaged("farewell table over 4 GiB".into()))?;
    let mut out = Vec::with_capacity(MAGIC.len() + 8 + table.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&table_len.to_le_bytes());
    out.extend_from_slice(&table);
    postcard::to_extend(body, out).map_err(|e| StateError::Damaged(e.to_string()))
}

/// Reads the envelope of `bytes`; the body is decoded by [`decode_body`]
/// once the version is known to be ours.
pub fn open(bytes: &[u8]) -> Result<Envelope<'_>, StateError> {
    let rest = bytes.strip_prefix(MAGIC).ok_or(StateError::NotAState)?;
    let (version, rest) = take_u32(rest)?;
    let (table_len, rest) = take_u32(rest)?;
    let table_len = usize::try_from(table_len).unwrap_or(usize::MAX);
    if table_len > rest.len() {
        return Err(StateError::Damaged("farewell table cut short".into()));
    }
    let (table, body) = rest.split_at(table_len);
    let farewells: Vec<Farewell> =
        postcard::from_bytes(table).map_err(|e| StateError::Damaged(format!("farewells: {e}")))?;
    Ok(Envelope {
        version,
        farewells,
        body,
    })
}

/// Decodes a body of this binary's version.
pub fn decode_body<T: DeserializeOwned>(envelope: &Envelope<'_>) -> Result<T, StateError> {
    if envelope.version != VERSION {
        return Err(StateError::Version(envelope.version));
    }
    postcard::from_bytes(envelope.body).map_err(|e| StateError::Damaged(e.to_string()))
}

fn take_u32(bytes: &[u8]) -> Result<(u32, &[u8]), StateError> {
    match bytes.split_first_chunk::<4>() {
        Some((head, rest)) => Ok((u32::from_le_bytes(*head), rest)),
        None => Err(StateError::Damaged("cut short".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Body {
        names: Vec<String>,
        n: u64,
    }

    fn farewell() -> Farewell {
        Farewell {
            local: "127.0.0.1:80".parse().unwrap(),
            peer: "127.0.0.2:4000".parse().unwrap(),
            bytes: vec![0x88, 0x02, 0x03, 0xf4],
        }
    }

    #[test]
    fn round_trip() {
        let body = Body {
            names: vec!["a".into(), "b:c".into()],
            n: 7,
        };
        let bytes = encode(&[farewell()], &body).unwrap();
        let envelope = open(&bytes).unwrap();
        assert_eq!(envelope.version, VERSION);
        assert_eq!(envelope.farewells, vec![farewell()]);
        assert_eq!(decode_body::<Body>(&envelope).unwrap(), body);
    }

    #[test]
    fn another_version_keeps_its_farewells_readable() {
        let mut bytes = encode(
            &[farewell()],
            &Body {
                names: vec![],
                n: 1,
            },
        )
        .unwrap();
        let at = MAGIC.len();
        bytes[at..at + 4].copy_from_slice(&(VERSION + 1).to_le_bytes());
        let envelope = open(&bytes).unwrap();
        assert_eq!(envelope.farewells, vec![farewell()]);
        assert!(matches!(
            decode_body::<Body>(&envelope),
            Err(StateError::Version(v)) if v == VERSION + 1
        ));
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        assert!(matches!(open(b"hello"), Err(StateError::NotAState)));
        let bytes = encode(
            &[farewell()],
            &Body {
                names: vec!["x".into()],
                n: 1,
            },
        )
        .unwrap();
        for cut in 0..bytes.len() {
            if let Ok(envelope) = open(&bytes[..cut]) {
                assert!(decode_body::<Body>(&envelope).is_err(), "cut {cut}");
            }
        }
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&VERSION.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(open(&huge), Err(StateError::Damaged(_))));
    }
}
