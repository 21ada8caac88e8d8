//! The metadata format: how a message travels to a client that asked for
//! its channel and position (`meta=1`, or any `recover=`), and the text
//! frames that tell a client where it stands after subscribing or
//! recovering.
//!
//! Owns: the exact bytes of those payloads (framing is the caller's).
//! Must never: decide who gets which format, or parse anything a client
//! sent.
//!
//! A text message becomes a text frame holding one JSON object,
//! `{"channel":"news","epoch":"…","offset":17,"text":"…"}`, or, when its
//! publish said `Content-Type: application/json` and the body is valid
//! JSON, `…,"json":<the body as is>}` so browser code parses it once. A
//! binary message stays binary: a 2-byte big-endian header length, the
//! header `{"channel":"news","epoch":"…","offset":17}`, then the payload.
//! Channel names and epochs never need JSON escaping (their alphabets have
//! no quotes, backslashes or control characters). Without a position (a
//! cluster delivery that carries none) `epoch` and `offset` are left out.

use std::io::Write;

use super::NotRecovered;
use super::position::Position;

/// What kind of payload a message carries, fixed at publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    /// Text that is valid JSON, published as `application/json`.
    Json,
    Binary,
}

/// `{"channel":"…"` plus the position fields.
fn open_object(channel: &str, position: Option<Position>, out: &mut Vec<u8>) {
    let _ = write!(out, "{{\"channel\":\"{channel}\"");
    if let Some(Position { epoch, offset }) = position {
        let _ = write!(out, ",\"epoch\":\"{epoch}\",\"offset\":{offset}");
    }
}

/// Appends the metadata payload of a message to `out`.
pub(crate) fn write_message(
    channel: &str,
    position: Option<Position>,
    kind: Kind,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    match kind {
        Kind::Json => {
            open_object(channel, position, out);
            out.extend_from_slice(b",\"json\":");
            out.extend_from_slice(payload);
            out.push(b'}');
        }
        Kind::Text => {
            open_object(channel, position, out);
            out.extend_from_slice(b",\"text\":");
            let text = String::from_utf8_lossy(payload);
            // Writing JSON into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, &*text);
            out.push(b'}');
        }
        Kind::Binary => {
            let at = out.len();
            out.extend_from_slice(&[0, 0]);
            open_object(channel, position, out);
            out.push(b'}');
            let header = u16::try_from(out.len() - at - 2).unwrap_or(u16::MAX);
            out[at..at + 2].copy_from_slice(&header.to_be_bytes());
            out.extend_from_slice(payload);
        }
    }
}

/// A generous bound on the bytes [`write_message`] adds to a payload (the
/// channel name at most 128 bytes, text escaping aside).
pub(crate) const MAX_OVERHEAD: usize = 256;

/// Whether a body is valid JSON (checked once, at publish).
pub(crate) fn is_json(payload: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
}

/// Room enough for any of the answers below (channel names are at most 128
/// bytes).
pub(crate) const MAX_ANSWER_LEN: usize = 384;

/// `{"channel":…,"subscribed":true,"epoch":…,"offset":N}`: where the channel
/// stands as a metadata client subscribes without recovering.
pub(crate) fn write_subscribed(channel: &str, current: Position, out: &mut impl Write) {
    let Position { epoch, offset } = current;
    let _ = write!(
        out,
        "{{\"channel\":\"{channel}\",\"subscribed\":true,\"epoch\":\"{epoch}\",\"offset\":{offset}}}"
    );
}

/// `{"channel":…,"recovered":true,"epoch":…,"offset":<from>,"replayed":N}`.
pub(crate) fn write_recovered(
    channel: &str,
    from: Position,
    replayed: usize,
    out: &mut impl Write,
) {
    let Position { epoch, offset } = from;
    let _ = write!(
        out,
        "{{\"channel\":\"{channel}\",\"recovered\":true,\"epoch\":\"{epoch}\",\"offset\":{offset},\"replayed\":{replayed}}}"
    );
}

/// `{"channel":…,"recovered":false,"reason":…,"epoch":<current>,"offset":<current>}`.
pub(crate) fn write_not_recovered(
    channel: &str,
    reason: NotRecovered,
    current: Position,
    out: &mut impl Write,
) {
    let Position { epoch, offset } = current;
    let reason = reason.as_str();
    let _ = write!(
        out,
        "{{\"channel\":\"{channel}\",\"recovered\":false,\"reason\":\"{reason}\",\"epoch\":\"{epoch}\",\"offset\":{offset}}}"
    );
}

#[cfg(test)]
mod tests {
    use super::super::position::Epoch;
    use super::*;

    fn at(offset: u64) -> Option<Position> {
        Some(Position {
            epoch: Epoch::new(0xabc),
            offset,
        })
    }

    fn text(kind: Kind, payload: &[u8], position: Option<Position>) -> String {
        let mut out = Vec::new();
        write_message("news", position, kind, payload, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn each_kind_has_its_form() {
        assert_eq!(
            text(Kind::Json, br#"{"a":[1,2]}"#, at(17)),
            r#"{"channel":"news","epoch":"0000000000000abc","offset":17,"json":{"a":[1,2]}}"#
        );
        assert_eq!(
            text(Kind::Text, "say \"hi\"\n\u{1}é".as_bytes(), at(3)),
            r#"{"channel":"news","epoch":"0000000000000abc","offset":3,"text":"say \"hi\"\n\u0001é"}"#
        );
        assert_eq!(
            text(Kind::Text, b"x", None),
            r#"{"channel":"news","text":"x"}"#
        );
        let mut out = Vec::new();
        write_message("news", at(9), Kind::Binary, &[0, 255, 7], &mut out);
        let header = br#"{"channel":"news","epoch":"0000000000000abc","offset":9}"#;
        assert_eq!(
            usize::from(u16::from_be_bytes([out[0], out[1]])),
            header.len()
        );
        assert_eq!(&out[2..2 + header.len()], header);
        assert_eq!(&out[2 + header.len()..], [0, 255, 7]);
    }

    #[test]
    fn every_text_form_parses_back_to_the_payload() {
        for payload in [
            "",
            "plain",
            "quote \" back \\ slash",
            "\u{0}\u{1f}\u{7f}",
            "ünï © 🎉",
        ] {
            let out = text(Kind::Text, payload.as_bytes(), at(1));
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["text"], payload, "{out}");
            assert_eq!(v["offset"], 1);
        }
        let out = text(Kind::Json, b" [1, {\"b\": null}] ", at(1));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["json"], serde_json::json!([1, {"b": null}]));
    }

    #[test]
    fn json_is_checked_once_with_a_real_parser() {
        assert!(is_json(b"{\"a\":1}"));
        assert!(is_json(b" 12 "));
        assert!(!is_json(b"{\"a\":1"));
        assert!(!is_json(b"{\"a\":1} x"));
        assert!(!is_json(b""));
        assert!(is_json(b"\t\r\n\"s\"\n"), "a scalar, in JSON's whitespace");
        assert!(is_json(b"null"));
        // Not JSON text by RFC 8259 (a browser's JSON.parse refuses them too),
        // so they travel as "text" rather than break the envelope.
        assert!(!is_json(b"\xef\xbb\xbf{}"), "a leading byte order mark");
        assert!(!is_json(b"\x0c{}"), "form feed is not JSON whitespace");
        assert!(!is_json(b"NaN"));
        assert!(!is_json(b"{\"a\":1,}"));
        // Every control character and U+2028/U+2029 survive as text.
        let all: String = (0u32..0x20)
            .chain([0x7f, 0x2028, 0x2029, 0xfeff])
            .filter_map(char::from_u32)
            .collect();
        let out = text(Kind::Text, all.as_bytes(), None);
        assert!(out.bytes().all(|b| b >= 0x20), "{out:?}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["text"], all);
    }

    #[test]
    fn answers() {
        let p = Position {
            epoch: Epoch::new(1),
            offset: 5,
        };
        let mut out = Vec::new();
        write_recovered("a", p, 2, &mut out);
        write_not_recovered("a", NotRecovered::TooMany, p, &mut out);
        write_subscribed("a", p, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            concat!(
                r#"{"channel":"a","recovered":true,"epoch":"0000000000000001","offset":5,"replayed":2}"#,
                r#"{"channel":"a","recovered":false,"reason":"too_many","epoch":"0000000000000001","offset":5}"#,
                r#"{"channel":"a","subscribed":true,"epoch":"0000000000000001","offset":5}"#
            )
        );
    }
}
