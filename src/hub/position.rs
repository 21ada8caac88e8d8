//! Message positions: where a message sits in its channel's history.
//!
//! Owns: the [`Epoch`] and [`Position`] types and their text form (as
//! clients see and send them).
//! Must never: decide what is kept (that is the history store's job), read a
//! clock, or accept a malformed position as valid.
//!
//! An epoch names one unbroken history of a channel: offsets in it grow by
//! one per message with no gap. A new epoch starts whenever continuity
//! cannot be vouched for (a fresh single node, a Redis that lost its data).
//! It is a random 64-bit value written as 16 lowercase hex digits, so it is
//! a plain string to browser code and cannot contain a separator.

use std::fmt;

/// One unbroken history of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Epoch(u64);

/// Characters in an epoch's text form.
pub(crate) const EPOCH_LEN: usize = 16;

impl Epoch {
    pub fn new(value: u64) -> Epoch {
        Epoch(value)
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// Parses the text form: exactly 16 lowercase hex digits.
    pub fn parse(text: &str) -> Option<Epoch> {
        let ok =
            text.len() == EPOCH_LEN && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| u64::from_str_radix(text, 16).ok().map(Epoch))
            .flatten()
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A message's place: its offset within an epoch. The first message of an
/// epoch has offset 1; offset 0 means "before any message".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    pub epoch: Epoch,
    pub offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_text_round_trips_and_refuses_anything_else() {
        for value in [0, 1, 0xdead_beef, u64::MAX] {
            let epoch = Epoch::new(value);
            let text = epoch.to_string();
            assert_eq!(text.len(), EPOCH_LEN);
            assert_eq!(Epoch::parse(&text), Some(epoch));
        }
        for bad in [
            "",
            "0",
            "000000000000000g",
            "00000000000000000",
            "DEADBEEFDEADBEEF",
            "+00000000000000f",
            " 00000000000000f",
        ] {
            assert_eq!(Epoch::parse(bad), None, "{bad:?}");
        }
    }
}
