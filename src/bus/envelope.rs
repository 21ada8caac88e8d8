//! The wire format of a message between nodes: what one node publishes to
//! Redis and every node (itself included) reads back.
//!
//! Owns: the versioned envelope (version, payload kind, origin node, the
//! message's position when the channel keeps history, the connection to
//! leave out at the origin, payload) and its parser.
//! Must never: trust a byte of it (anyone with access to Redis can publish
//! to our channels), panic on any input, or allocate when parsing.
//!
//! Layout, version 1 (no position: history is off):
//! ```text
//! [0]      version (1)
//! [1]      flags: bit 0 binary (else text), bit 1 an exclude token follows
//! [2..10]  origin node id, big-endian
//! [10..18] exclude token (a connection of the origin node), if flagged
//! [..]     payload
//! ```
//! Version 2 (history on) carries the position Redis gave the message, in
//! text, because the publish script writes it (Lua has no 64-bit integers;
//! text it can format exactly):
//! ```text
//! [0]      version (2)
//! [1]      flags, as in version 1
//! [2..10]  origin node id, big-endian
//! [10..26] epoch: 16 lowercase hex digits
//! [26..46] offset: 20 decimal digits, zero-padded
//! [46..54] exclude token, if flagged
//! [..]     payload
//! ```
//! A node writes version 2 without the position ([`Envelope::write_unplaced`]);
//! the script inserts it at [`POSITION_AT`]. Nodes refuse versions they do
//! not know, so a mixed-version cluster is visible in `/metrics` rather than
//! garbling messages. Every field has one spelling, so an accepted envelope
//! writes back to the very bytes it came from.

use crate::hub::position::{EPOCH_LEN, Epoch, Position};

/// Version 1: no position.
const VERSION_1: u8 = 1;
/// Version 2: a position after the fixed fields.
const VERSION_2: u8 = 2;
const FLAG_BINARY: u8 = 1;
const FLAG_EXCLUDE: u8 = 2;
const KNOWN_FLAGS: u8 = FLAG_BINARY | FLAG_EXCLUDE;
const FIXED_LEN: usize = 10;
const EXCLUDE_LEN: usize = 8;
/// Digits of the offset in version 2 (`u64::MAX` has 20).
const OFFSET_DIGITS: usize = 20;
/// Where version 2's position starts (the publish script inserts it here).
pub(crate) const POSITION_AT: usize = FIXED_LEN;
const POSITION_LEN: usize = EPOCH_LEN + OFFSET_DIGITS;

/// One decoded envelope, borrowing its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// A binary message (else text: the payload must be UTF-8).
    pub binary: bool,
    /// The node that published it.
    pub origin: u64,
    /// Where Redis placed it in its channel (version 2), `None` when the
    /// channel keeps no history (version 1).
    pub position: Option<Position>,
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
    #[error("malformed position")]
    Position,
    #[error("text payload is not UTF-8")]
    NotUtf8,
}

/// The offset's text form: exactly 20 decimal digits.
fn parse_offset(digits: &[u8; OFFSET_DIGITS]) -> Option<u64> {
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
            .flatten()
    })
}

impl<'a> Envelope<'a> {
    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.binary {
            flags |= FLAG_BINARY;
        }
        if self.exclude.is_some() {
            flags |= FLAG_EXCLUDE;
        }
        flags
    }

    fn write_parts(&self, out: &mut Vec<u8>, version: u8, position: Option<Position>) {
        out.reserve(FIXED_LEN + POSITION_LEN + EXCLUDE_LEN + self.payload.len());
        out.push(version);
        out.push(self.flags());
        out.extend_from_slice(&self.origin.to_be_bytes());
        if let Some(Position { epoch, offset }) = position {
            use std::io::Write as _;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{epoch}{offset:020}");
        }
        if let Some(token) = self.exclude {
            out.extend_from_slice(&token.to_be_bytes());
        }
        out.extend_from_slice(self.payload);
    }

    /// Appends the encoded envelope to `out`: version 2 with a position,
    /// else version 1.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self.position {
            Some(position) => self.write_parts(out, VERSION_2, Some(position)),
            None => self.write_parts(out, VERSION_1, None),
        }
    }

    /// Appends a version 2 envelope without its position (ignoring
    /// `self.position`): what the publish script completes by inserting
    /// the position Redis assigns at [`POSITION_AT`].
    pub(crate) fn write_unplaced(&self, out: &mut Vec<u8>) {
        self.write_parts(out, VERSION_2, None);
    }

    /// The position of a well-formed envelope's header, without checking
    /// the payload: what sequencing needs before deciding to deliver.
    pub fn peek_position(bytes: &[u8]) -> Option<Position> {
        let header = bytes.get(..POSITION_AT + POSITION_LEN)?;
        if header.first() != Some(&VERSION_2) {
            return None;
        }
        let (_, position) = header.split_at(POSITION_AT);
        let (epoch, offset) = position.split_first_chunk::<EPOCH_LEN>()?;
        let offset: &[u8; OFFSET_DIGITS] = offset.try_into().ok()?;
        Some(Position {
            epoch: Epoch::parse(std::str::from_utf8(epoch).ok()?)?,
            offset: parse_offset(offset)?,
        })
    }

    /// Parses an envelope read from Redis; a text payload is checked for UTF-8.
    pub fn parse(bytes: &'a [u8]) -> Result<Envelope<'a>, EnvelopeError> {
        let (&version, rest) = bytes.split_first().ok_or(EnvelopeError::Short)?;
        if version != VERSION_1 && version != VERSION_2 {
            return Err(EnvelopeError::Version(version));
        }
        let (&flags, rest) = rest.split_first().ok_or(EnvelopeError::Short)?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(EnvelopeError::Flags(flags));
        }
        let (origin, rest) = rest.split_first_chunk::<8>().ok_or(EnvelopeError::Short)?;
        let (position, rest) = if version == VERSION_2 {
            let (epoch, rest) = rest
                .split_first_chunk::<EPOCH_LEN>()
                .ok_or(EnvelopeError::Short)?;
            let (offset, rest) = rest
                .split_first_chunk::<OFFSET_DIGITS>()
                .ok_or(EnvelopeError::Short)?;
            let epoch = std::str::from_utf8(epoch)
                .ok()
                .and_then(Epoch::parse)
                .ok_or(EnvelopeError::Position)?;
            let offset = parse_offset(offset).ok_or(EnvelopeError::Position)?;
            (Some(Position { epoch, offset }), rest)
        } else {
            (None, rest)
        };
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
            position,
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
        assert_eq!(Envelope::parse(&[3, 0]), Err(EnvelopeError::Version(3)));
        assert_eq!(Envelope::parse(&[1, 4]), Err(EnvelopeError::Flags(4)));
        assert_eq!(
            Envelope::parse(&[1, 2, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(EnvelopeError::Short)
        );
        let mut text = vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        text.push(0xff);
        assert_eq!(Envelope::parse(&text), Err(EnvelopeError::NotUtf8));
        // Version 2: the position is strict text.
        let mut v2 = vec![2, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        assert_eq!(Envelope::parse(&v2), Err(EnvelopeError::Short));
        v2.extend_from_slice(b"00000000000000ab");
        v2.extend_from_slice(b"00000000000000000017");
        let e = Envelope::parse(&v2).unwrap();
        assert_eq!(
            e.position,
            Some(Position {
                epoch: Epoch::new(0xab),
                offset: 17
            })
        );
        for (at, bad) in [(10, b'A'), (26, b'x'), (45, b' ')] {
            let mut wrong = v2.clone();
            wrong[at] = bad;
            assert_eq!(Envelope::parse(&wrong), Err(EnvelopeError::Position));
        }
        let mut huge = v2[..26].to_vec();
        huge.extend_from_slice(b"99999999999999999999");
        assert_eq!(Envelope::parse(&huge), Err(EnvelopeError::Position));
    }

    #[test]
    fn an_unplaced_envelope_completed_like_the_script_parses() {
        let e = Envelope {
            binary: true,
            origin: 5,
            position: None,
            exclude: Some(9),
            payload: b"\x00\xff",
        };
        let mut unplaced = Vec::new();
        e.write_unplaced(&mut unplaced);
        let mut placed = unplaced[..POSITION_AT].to_vec();
        placed.extend_from_slice(format!("{}{:020}", Epoch::new(u64::MAX), 42).as_bytes());
        placed.extend_from_slice(&unplaced[POSITION_AT..]);
        let position = Position {
            epoch: Epoch::new(u64::MAX),
            offset: 42,
        };
        assert_eq!(
            Envelope::parse(&placed),
            Ok(Envelope {
                position: Some(position),
                ..e
            })
        );
    }

    proptest! {
        #[test]
        fn round_trips(
            binary: bool,
            origin: u64,
            position: Option<(u64, u64)>,
            exclude: Option<u64>,
            payload: Vec<u8>,
        ) {
            let payload = if binary { payload } else { String::from_utf8_lossy(&payload).into_owned().into_bytes() };
            let position = position.map(|(e, offset)| Position { epoch: Epoch::new(e), offset });
            let e = Envelope { binary, origin, position, exclude, payload: &payload };
            let mut out = Vec::new();
            e.write(&mut out);
            prop_assert_eq!(Envelope::parse(&out), Ok(e));
            prop_assert_eq!(Envelope::peek_position(&out), e.position);
        }

        #[test]
        fn never_panics(bytes: Vec<u8>) {
            let _ = Envelope::parse(&bytes);
        }
    }
}
