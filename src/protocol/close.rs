//! Close codes and close-frame payload rules (RFC 6455 §5.5.1, §7.4).
//!
//! Owns: which codes may appear on the wire, parsing and building close payloads.
//! Must never: decide when a connection closes — the connection state machine does.

/// Bytes taken by the status code at the start of a close payload.
const CODE_LEN: usize = 2;
/// Largest payload of any control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;
/// Room left for the reason after the code.
const MAX_REASON_LEN: usize = MAX_CONTROL_PAYLOAD - CODE_LEN;

/// A close status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: CloseCode = CloseCode(1000);
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    pub const BAD_GATEWAY: CloseCode = CloseCode(1014);

    /// May a peer send this code in a close frame?
    ///
    /// 1004 is reserved, 1005/1006/1015 are for local reporting only, the rest
    /// of 1000–2999 is unassigned, 3000–3999 is registered for libraries and
    /// 4000–4999 is private use.
    pub fn is_allowed_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// Why a received close payload is invalid, with the code to fail the connection with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CloseError {
    #[error("close payload of one byte")]
    OneByte,
    #[error("close code {0} is not allowed on the wire")]
    BadCode(u16),
    #[error("close reason is not valid UTF-8")]
    BadReason,
}

impl CloseError {
    #[cfg(test)]
    /// The code to close with: 1007 for a bad reason, 1002 otherwise.
    pub(crate) fn code(self) -> CloseCode {
        match self {
            CloseError::BadReason => CloseCode::INVALID_PAYLOAD,
            CloseError::OneByte | CloseError::BadCode(_) => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// Parses a received close payload: `None` for an empty payload.
pub(crate) fn parse_close_payload(payload: &[u8]) -> Result<Option<(CloseCode, &str)>, CloseError> {
    let (code, reason) = match payload {
        [] => return Ok(None),
        [_] => return Err(CloseError::OneByte),
        [hi, lo, reason @ ..] => (CloseCode(u16::from_be_bytes([*hi, *lo])), reason),
    };
    if !code.is_allowed_on_wire() {
        return Err(CloseError::BadCode(code.0));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| CloseError::BadReason)?;
    Ok(Some((code, reason)))
}

/// The code a server echoes when answering a peer's close: the peer's own
/// code, or 1000 when its close carried none (1005 must not go on the wire).
pub(crate) fn reply_code(received: Option<CloseCode>) -> CloseCode {
    received.unwrap_or(CloseCode::NORMAL)
}

/// Builds a close payload (code + reason) into `out`, truncating the reason at
/// a char boundary so the whole fits a control frame; returns the length.
pub(crate) fn encode_close_payload(
    code: CloseCode,
    reason: &str,
    out: &mut [u8; MAX_CONTROL_PAYLOAD],
) -> usize {
    let reason = truncate_at_char_boundary(reason, MAX_REASON_LEN);
    let len = CODE_LEN + reason.len();
    out[..CODE_LEN].copy_from_slice(&code.0.to_be_bytes());
    out[CODE_LEN..len].copy_from_slice(reason.as_bytes());
    len
}

/// Longest prefix of `s` that is at most `max` bytes and ends on a char boundary.
fn truncate_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let end = (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_codes_at_every_boundary() {
        let table: &[(u16, bool)] = &[
            (0, false),
            (999, false),
            (1000, true),
            (1001, true),
            (1002, true),
            (1003, true),
            (1004, false),
            (1005, false),
            (1006, false),
            (1007, true),
            (1008, true),
            (1009, true),
            (1010, true),
            (1011, true),
            (1012, true),
            (1013, true),
            (1014, true),
            (1015, false),
            (1016, false),
            (2999, false),
            (3000, true),
            (4999, true),
            (5000, false),
            (65535, false),
        ];
        for &(code, allowed) in table {
            assert_eq!(CloseCode(code).is_allowed_on_wire(), allowed, "code {code}");
        }
    }

    #[test]
    fn parse_payload_table() {
        type Expected = Result<Option<(CloseCode, &'static str)>, CloseError>;
        let table: &[(&[u8], Expected)] = &[
            (b"", Ok(None)),
            (&[0x03], Err(CloseError::OneByte)),
            (&[0x03, 0xE8], Ok(Some((CloseCode::NORMAL, "")))),
            (
                b"\x03\xE9bye \xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5",
                Ok(Some((CloseCode::GOING_AWAY, "bye κ\u{1f79}σμε"))),
            ),
            (&[0x0F, 0xA0, b'o', b'k'], Ok(Some((CloseCode(4000), "ok")))),
            (&[0x03, 0xE8, 0xFF], Err(CloseError::BadReason)),
            (
                &[0x03, 0xE8, b'a', 0xED, 0xA0, 0x80],
                Err(CloseError::BadReason),
            ),
            (&[0x03, 0xE8, 0xE2, 0x82], Err(CloseError::BadReason)),
            (&[0x03, 0xED], Err(CloseError::BadCode(1005))),
            (&[0x03, 0xEE, b'x'], Err(CloseError::BadCode(1006))),
            (&[0x00, 0x00], Err(CloseError::BadCode(0))),
            (&[0xFF, 0xFF], Err(CloseError::BadCode(65535))),
            // A bad code is reported even when the reason is bad too.
            (&[0x03, 0xEC, 0xFF], Err(CloseError::BadCode(1004))),
        ];
        for (payload, expected) in table {
            assert_eq!(&parse_close_payload(payload), expected, "{payload:02X?}");
        }
    }

    #[test]
    fn parse_oversized_payload_does_not_panic() {
        let mut payload = vec![0x03, 0xE8];
        payload.extend(std::iter::repeat_n(b'a', 1000));
        let parsed = parse_close_payload(&payload);
        assert_eq!(
            parsed.map(|p| p.map(|(c, r)| (c, r.len()))),
            Ok(Some((CloseCode::NORMAL, 1000)))
        );
    }

    #[test]
    fn error_codes() {
        assert_eq!(CloseError::OneByte.code(), CloseCode::PROTOCOL_ERROR);
        assert_eq!(CloseError::BadCode(1005).code(), CloseCode::PROTOCOL_ERROR);
        assert_eq!(CloseError::BadReason.code(), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn reply_code_echoes_or_defaults_to_normal() {
        assert_eq!(reply_code(None), CloseCode::NORMAL);
        assert_eq!(
            reply_code(Some(CloseCode::GOING_AWAY)),
            CloseCode::GOING_AWAY
        );
        assert_eq!(reply_code(Some(CloseCode(4321))), CloseCode(4321));
    }

    #[test]
    fn encode_short_reason_round_trips() {
        let mut out = [0u8; MAX_CONTROL_PAYLOAD];
        let len = encode_close_payload(CloseCode::GOING_AWAY, "bye", &mut out);
        assert_eq!(&out[..len], b"\x03\xE9bye");
        assert_eq!(
            parse_close_payload(&out[..len]),
            Ok(Some((CloseCode::GOING_AWAY, "bye")))
        );
        let len = encode_close_payload(CloseCode::NORMAL, "", &mut out);
        assert_eq!(&out[..len], &[0x03, 0xE8]);
    }

    #[test]
    fn encode_truncates_multibyte_reason_at_char_boundary() {
        // 100 two-byte chars: 200 bytes; byte 123 falls inside a char.
        let reason = "κ".repeat(100);
        assert_eq!(reason.len(), 200);
        let mut out = [0u8; MAX_CONTROL_PAYLOAD];
        let len = encode_close_payload(CloseCode::NORMAL, &reason, &mut out);
        assert_eq!(len, CODE_LEN + 122);
        let parsed = parse_close_payload(&out[..len]);
        assert_eq!(parsed, Ok(Some((CloseCode::NORMAL, &reason[..122]))));

        // Three- and four-byte chars too.
        for (ch, kept) in [("€", 123), ("🦀", 120)] {
            let reason = ch.repeat(200 / ch.len() + 1);
            let len = encode_close_payload(CloseCode::NORMAL, &reason, &mut out);
            assert_eq!(len, CODE_LEN + kept, "{ch}");
            assert!(std::str::from_utf8(&out[CODE_LEN..len]).is_ok());
        }
    }

    #[test]
    fn encode_keeps_reason_of_exactly_max_len() {
        let reason = "a".repeat(MAX_REASON_LEN);
        let mut out = [0u8; MAX_CONTROL_PAYLOAD];
        assert_eq!(
            encode_close_payload(CloseCode::NORMAL, &reason, &mut out),
            MAX_CONTROL_PAYLOAD
        );
        let longer = "a".repeat(MAX_REASON_LEN + 1);
        assert_eq!(
            encode_close_payload(CloseCode::NORMAL, &longer, &mut out),
            MAX_CONTROL_PAYLOAD
        );
    }
}
