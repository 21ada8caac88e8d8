//! Close codes and close-frame payload rules (RFC 6455 §5.5.1, §7.4).
//!
//! Owns: which codes may appear on the wire, parsing and building close payloads.
//! Must never: decide when a connection closes — the connection state machine does.

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
    pub fn is_allowed_on_wire(self) -> bool {
        todo!()
    }
}

/// Why a received close payload is invalid, with the code to fail the connection with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CloseError {
    #[error("close payload of one byte")]
    OneByte,
    #[error("close code {0} is not allowed on the wire")]
    BadCode(u16),
    #[error("close reason is not valid UTF-8")]
    BadReason,
}

impl CloseError {
    /// The code to close with: 1007 for a bad reason, 1002 otherwise.
    pub fn code(self) -> CloseCode {
        todo!()
    }
}

/// Parses a received close payload: `None` for an empty payload.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<(CloseCode, &str)>, CloseError> {
    todo!("{payload:?}")
}

/// Builds a close payload (code + reason) into `out`, truncating the reason at
/// a char boundary so the whole fits a control frame; returns the length.
pub fn encode_close_payload(code: CloseCode, reason: &str, out: &mut [u8; 125]) -> usize {
    todo!("{code:?} {reason} {out:?}")
}
