//! The wire format of a message between nodes: what one node publishes to
//! Redis and every node (itself included) reads back.
//!
//! Owns: the versioned envelope (version, payload kind, origin node, the
//! connection to leave out at the origin, payload) and its parser.
//! Must never: trust a byte of it (anyone with access to Redis can publish
//! to our channels), panic on any input, or allocate when parsing.
//!
//! Layout, version 1:
//! ```text
//! [0]      version (1)
//! [1]      flags: bit 0 binary (else text), bit 1 an exclude token follows
//! [2..10]  origin node id, big-endian
//! [10..18] exclude token (a connection of the origin node), if flagged
//! [..]     payload
//! ```
//! A later version can add a per-channel position (issue #13) after the
//! fixed fields; nodes refuse versions they do not know, so a mixed-version
//! cluster is visible in `/metrics` rather than garbling messages.

/// The version this node writes and the only one it reads.
pub(crate) const VERSION: u8 = 1;
const FLAG_BINARY: u8 = 1;
const FLAG_EXCLUDE: u8 = 2;
const KNOWN_FLAGS: u8 = FLAG_BINARY | FLAG_EXCLUDE;
const FIXED_LEN: usize = 10;
const EXCLUDE_LEN: usize = 8;

/// One decoded envelope, borrowing its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// A binary message (else text: the payload must be UTF-8).
    pub binary: bool,
    /// The node that published it.
    pub origin: u64,
    /// At the origin node, the connection that must not get it (a chat
    /// relay's sender).
    pub exclude: Option<u64>,
    pub payload: &'a [u8],
}

/// Why an envelope was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope too short")]
    Short,
    #[error("unknown envelope version {0}")]
    Version(u8),
    #[error("unknown envelope flags {0:#04x}")]
    Flags(u8),
    #[error("text payload is not UTF-8")]
    NotUtf8,
}

impl<'a> Envelope<'a> {
    /// Appends the encoded envelope to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut flags = 0;
        if self.binary {
            flags |= FLAG_BINARY;
        }
        if self.exclude.is_some() {
            flags |= FLAG_EXCLUDE;
        }
        out.reserve(FIXED_LEN + EXCLUDE_LEN + self.payload.len());
        out.push(VERSION);
        out.push(flags);
        out.extend_from_slice(&self.origin.to_be_bytes());
        if let Some(token) = self.exclude {
            out.extend_from_slice(&token.to_be_bytes());
        }
        out.extend_from_slice(self.payload);
    }

    /// Parses an envelope read from Redis; a text payload is checked for UTF-8.
    pub fn parse(bytes: &'a [u8]) -> Result<Envelope<'a>, EnvelopeError> {
        let (&version, rest) = bytes.split_first().ok_or(EnvelopeError::Short)?;
        if version != VERSION {
            return Err(EnvelopeError::Version(version));
        }
        let (&flags, rest) = rest.split_first().ok_or(EnvelopeError::Short)?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(EnvelopeError::Flags(flags));
        }
        let (origin, rest) = rest.split_first_chunk::<8>().ok_or(EnvelopeError::Short)?;
        let (exclude, payload) = if flags & FLAG_EXCLUDE != 0 {
            let (token, rest) = rest.split_first_chunk::<8>().ok_or(EnvelopeError::Short)?;
            (Some(u64::from_be_bytes(*token)), rest)
        } else {
            (None, rest)
        };
        let binary = flags & FLAG_BINARY != 0;
        if !binary && std::str::from_utf8(payload).is_err() {
            return Err(EnvelopeError::NotUtf8);
        }
        Ok(Envelope {
            binary,
            origin: u64::from_be_bytes(*origin),
            exclude,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_what_it_does_not_know() {
        assert_eq!(Envelope::parse(b""), Err(EnvelopeError::Short));
        assert_eq!(Envelope::parse(&[2, 0]), Err(EnvelopeError::Version(2)));
        assert_eq!(Envelope::parse(&[1, 4]), Err(EnvelopeError::Flags(4)));
        assert_eq!(
            Envelope::parse(&[1, 2, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(EnvelopeError::Short)
        );
        let mut text = vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        text.push(0xff);
        assert_eq!(Envelope::parse(&text), Err(EnvelopeError::NotUtf8));
    }

    proptest! {
        #[test]
        fn round_trips(binary: bool, origin: u64, exclude: Option<u64>, payload: Vec<u8>) {
            let payload = if binary { payload } else { String::from_utf8_lossy(&payload).into_owned().into_bytes() };
            let e = Envelope { binary, origin, exclude, payload: &payload };
            let mut out = Vec::new();
            e.write(&mut out);
            prop_assert_eq!(Envelope::parse(&out), Ok(e));
        }

        #[test]
        fn never_panics(bytes: Vec<u8>) {
            let _ = Envelope::parse(&bytes);
        }
    }
}
