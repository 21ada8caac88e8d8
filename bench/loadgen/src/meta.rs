//! wshub's metadata format as loadgen reads it (README, "Positions,
//! history and recovery"): subscriptions that ask for it, the binary
//! envelope around a payload, and the position in a JSON text frame.
//!
//! Owns: those few byte-level rules, so scenarios stay unaware of them.
//! Must never: allocate per message.

use crate::target::Target;
use crate::wire;

/// Bytes the metadata adds to a payload at most (a 2-byte length and a
/// header naming a channel of up to 128 bytes and a position).
pub const ROOM: usize = 256;

/// The same URL asking for metadata (`meta=1`).
pub fn with_meta(target: &Target) -> Target {
    with_query(target, "meta=1")
}

/// The same URL with one more query parameter.
pub fn with_query(target: &Target, param: &str) -> Target {
    let sep = if target.path.contains('?') { '&' } else { '?' };
    Target {
        path: format!("{}{sep}{param}", target.path),
        ..target.clone()
    }
}

/// The payload inside a metadata message, or `None` for wshub's own text
/// frames (where a channel stands, recovery answers): binary messages are
/// `[u16 header length][header][payload]`.
pub fn payload(opcode: u8, message: &[u8]) -> Option<&[u8]> {
    if opcode != wire::OP_BINARY {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([*message.first()?, *message.get(1)?]));
    message.get(2 + len..)
}

/// The value of `"key":` in a JSON object as raw text (a string without
/// its quotes), enough for wshub's flat answers.
pub fn field<'a>(json: &'a [u8], key: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(json).ok()?;
    let quoted = format!("\"{key}\":");
    let rest = &text[text.find(&quoted)? + quoted.len()..];
    match rest.strip_prefix('"') {
        Some(s) => s.split('"').next(),
        None => rest.split([',', '}']).next(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_envelope_and_fields() {
        let mut m = vec![0, 3];
        m.extend_from_slice(b"{ }abc");
        assert_eq!(payload(wire::OP_BINARY, &m), Some(&b"abc"[..]));
        assert_eq!(payload(wire::OP_TEXT, &m), None);
        assert_eq!(payload(wire::OP_BINARY, &[0]), None);
        let answer = br#"{"channel":"a","recovered":true,"epoch":"00ab","offset":7,"replayed":3}"#;
        assert_eq!(field(answer, "epoch"), Some("00ab"));
        assert_eq!(field(answer, "offset"), Some("7"));
        assert_eq!(field(answer, "recovered"), Some("true"));
        assert_eq!(field(answer, "replayed"), Some("3"));
        assert_eq!(field(answer, "nope"), None);
    }
}
