//! Offer parsing and parameter choice (RFC 7692 §5, §7.1).
//!
//! Grammar (RFC 6455 §9.1, RFC 7692 §5): the header holds a comma-separated
//! list of extensions, each `token *( ";" extension-param )` with
//! `extension-param = token [ "=" ( token | quoted-string ) ]`, optional
//! whitespace around every separator, and a quoted value that must be a token
//! once unescaped. Commas and semicolons inside a quoted-string separate
//! nothing. Names compare ASCII-case-insensitively.
//!
//! Decisions, each from RFC 7692 §7 ("decline" = skip that offer only):
//! - Unknown, duplicated, or malformed parameters, or a value out of its
//!   grammar: decline (§7, the offer is invalid).
//! - `server_no_context_takeover`, `client_no_context_takeover`: take no
//!   value; we answer with both whether offered or not (§7.1.1.1, §7.1.1.2
//!   let the server add them).
//! - `server_max_window_bits=N` (N in 8..=15, required): the response must
//!   carry it with a value <= N (§7.1.2.1), and we must then compress with at
//!   most 2^N bytes of window. We answer with N itself. N = 8 is declined:
//!   zlib implementations refuse an 8-bit window for raw DEFLATE, and
//!   answering 9 would break the client's limit.
//! - `server_max_window_bits` absent: we compress with 15 bits and do not
//!   name the parameter — §7.1.2.1 would allow it, but clients that did not
//!   offer it commonly fail the connection on it.
//! - `client_max_window_bits=N` (N in 8..=15): echoed as N, the largest value
//!   §7.1.2.2 permits in the response. N = 8 is fine: this limits the
//!   client's compressor, and our inflater always runs with a 15-bit window,
//!   which reads any stream made with a smaller one.
//! - `client_max_window_bits` without a value: a hint that the client
//!   understands the parameter; we leave it out of the response (§7.1.2.2 makes
//!   it optional), since we need no smaller client window.
//! - `client_max_window_bits` absent: the response must not name it
//!   (§7.1.2.2), and it does not.

use std::fmt;

use super::EXTENSION_NAME;
use crate::protocol::http::{self, trim_ows};

const SERVER_NO_CONTEXT_TAKEOVER: &str = "server_no_context_takeover";
const CLIENT_NO_CONTEXT_TAKEOVER: &str = "client_no_context_takeover";
const SERVER_MAX_WINDOW_BITS: &str = "server_max_window_bits";
const CLIENT_MAX_WINDOW_BITS: &str = "client_max_window_bits";

/// Smallest window RFC 7692 lets an offer name (§7.1.2.1).
const RFC_MIN_WINDOW_BITS: u8 = 8;
/// Smallest window zlib compresses raw DEFLATE with.
const MIN_WINDOW_BITS: u8 = 9;
/// DEFLATE's largest window: 32 KiB.
const MAX_WINDOW_BITS: u8 = 15;
/// "8" to "15": one or two decimal digits.
const MAX_WINDOW_DIGITS: usize = 2;

const LIST_SEPARATOR: u8 = b',';
const PARAM_SEPARATOR: u8 = b';';
const VALUE_SEPARATOR: u8 = b'=';
const QUOTE: u8 = b'"';
const ESCAPE: u8 = b'\\';

/// Base-2 logarithm of an LZ77 window this server can compress with: 9..=15.
///
/// For the server's direction it is also the key for sharing compressed
/// broadcasts: connections with equal values accept identical frames.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "u8", into = "u8")]
pub(crate) struct WindowBits(u8);

/// A window size read back from a handover's state is checked like one
/// that was negotiated.
impl TryFrom<u8> for WindowBits {
    type Error = &'static str;

    fn try_from(bits: u8) -> Result<WindowBits, &'static str> {
        WindowBits::new(bits).ok_or("window bits outside 9..=15")
    }
}

impl From<WindowBits> for u8 {
    fn from(bits: WindowBits) -> u8 {
        bits.0
    }
}

impl WindowBits {
    /// The full 32 KiB window.
    pub(crate) const MAX: WindowBits = WindowBits(MAX_WINDOW_BITS);
    /// The smallest window zlib compresses raw DEFLATE with.
    pub(crate) const MIN: WindowBits = WindowBits(MIN_WINDOW_BITS);

    /// `None` outside 9..=15.
    pub(crate) const fn new(bits: u8) -> Option<WindowBits> {
        if bits >= MIN_WINDOW_BITS && bits <= MAX_WINDOW_BITS {
            Some(WindowBits(bits))
        } else {
            None
        }
    }

    pub(crate) const fn get(self) -> u8 {
        self.0
    }
}

/// What was agreed for one connection. Both directions always use no
/// context takeover. Copy it into the connection: it is four bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(crate) struct Params {
    server_window: WindowBits,
    /// The client sent `server_max_window_bits`, so the response must too.
    name_server_window: bool,
    /// The `client_max_window_bits` value to answer with (8..=15), if any.
    client_max_window_bits: Option<u8>,
}

impl Params {
    #[cfg(test)]
    /// What a bare `permessage-deflate` offer yields.
    pub(crate) const DEFAULT: Params = Params {
        server_window: WindowBits::MAX,
        name_server_window: false,
        client_max_window_bits: None,
    };

    /// The window to compress this connection's messages with.
    pub(crate) fn server_window(&self) -> WindowBits {
        self.server_window
    }

    #[cfg(test)]
    /// The limit put on the client's window, when the response names one.
    /// Informational: the inflater reads any window.
    pub(crate) fn client_max_window_bits(&self) -> Option<u8> {
        self.client_max_window_bits
    }

    /// The `Sec-WebSocket-Extensions` value for the 101 response.
    pub(crate) fn response_header(&self) -> String {
        self.to_string()
    }
}

/// Formats the response header value.
impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{EXTENSION_NAME}; {SERVER_NO_CONTEXT_TAKEOVER}; {CLIENT_NO_CONTEXT_TAKEOVER}"
        )?;
        if self.name_server_window {
            write!(f, "; {SERVER_MAX_WINDOW_BITS}={}", self.server_window.get())?;
        }
        if let Some(bits) = self.client_max_window_bits {
            write!(f, "; {CLIENT_MAX_WINDOW_BITS}={bits}")?;
        }
        Ok(())
    }
}

/// Picks the first acceptable `permessage-deflate` offer across all
/// `Sec-WebSocket-Extensions` field values, in order. `None` when there is
/// none: the connection then runs without the extension (never an error).
pub(crate) fn negotiate<'a>(header_values: impl IntoIterator<Item = &'a [u8]>) -> Option<Params> {
    header_values
        .into_iter()
        .flat_map(|value| split_unquoted(value, LIST_SEPARATOR))
        .map(trim_ows)
        // RFC 9110 §5.6.1.2: empty list elements are ignored.
        .filter(|element| !element.is_empty())
        .find_map(accept_offer)
}

/// The parameters for one extension element, or `None` if it is another
/// extension or an offer we decline.
fn accept_offer(element: &[u8]) -> Option<Params> {
    let mut parts = split_unquoted(element, PARAM_SEPARATOR);
    let name = trim_ows(parts.next()?);
    if !name.eq_ignore_ascii_case(EXTENSION_NAME.as_bytes()) {
        return None;
    }

    let mut server_no_context_takeover = false;
    let mut client_no_context_takeover = false;
    let mut server_max_window_bits: Option<u8> = None;
    // Outer Option: named at all; inner: with a value.
    let mut client_max_window_bits: Option<Option<u8>> = None;

    for param in parts {
        let (name, value) = split_param(param)?;
        if name.eq_ignore_ascii_case(SERVER_NO_CONTEXT_TAKEOVER.as_bytes()) {
            set_flag(&mut server_no_context_takeover, value)?;
        } else if name.eq_ignore_ascii_case(CLIENT_NO_CONTEXT_TAKEOVER.as_bytes()) {
            set_flag(&mut client_no_context_takeover, value)?;
        } else if name.eq_ignore_ascii_case(SERVER_MAX_WINDOW_BITS.as_bytes()) {
            if server_max_window_bits.is_some() {
                return None;
            }
            server_max_window_bits = Some(parse_window_bits(value?)?);
        } else if name.eq_ignore_ascii_case(CLIENT_MAX_WINDOW_BITS.as_bytes()) {
            if client_max_window_bits.is_some() {
                return None;
            }
            client_max_window_bits = Some(match value {
                Some(value) => Some(parse_window_bits(value)?),
                None => None,
            });
        } else {
            return None;
        }
    }

    // Declines server_max_window_bits=8 (see the module doc): we cannot
    // compress within a 256-byte window and may not answer with more.
    let server_window = match server_max_window_bits {
        Some(bits) => WindowBits::new(bits)?,
        None => WindowBits::MAX,
    };
    Some(Params {
        server_window,
        name_server_window: server_max_window_bits.is_some(),
        client_max_window_bits: client_max_window_bits.flatten(),
    })
}

/// Records a parameter that takes no value; `None` (decline) when it has one
/// or was already given.
fn set_flag(seen: &mut bool, value: Option<&[u8]>) -> Option<()> {
    if *seen || value.is_some() {
        return None;
    }
    *seen = true;
    Some(())
}

/// Splits `name [ "=" value ]` with whitespace around each part; `None` if
/// the name is not a token or a `=` has no value after it.
fn split_param(param: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    // A token cannot hold '=' or '"', so the first '=' ends the name.
    let (name, value) = match param.iter().position(|&b| b == VALUE_SEPARATOR) {
        Some(at) => {
            let (name, rest) = param.split_at(at);
            (name, Some(trim_ows(rest.get(1..)?)))
        }
        None => (param, None),
    };
    let name = trim_ows(name);
    if !http::is_token(name) || value.is_some_and(<[u8]>::is_empty) {
        return None;
    }
    Some((name, value))
}

/// A window-bits value: a token or quoted-string that unescapes to a decimal
/// integer in 8..=15 without leading zeros (RFC 7692 §7.1.2.1).
fn parse_window_bits(raw: &[u8]) -> Option<u8> {
    let mut digits = [0u8; MAX_WINDOW_DIGITS];
    let mut len = 0;
    for byte in unescape(raw)? {
        *digits.get_mut(len)? = byte?;
        len += 1;
    }
    let digits = digits.get(..len)?;
    if digits.first() == Some(&b'0') || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u8, |acc, &digit| acc * 10 + (digit - b'0'));
    (RFC_MIN_WINDOW_BITS..=MAX_WINDOW_BITS)
        .contains(&value)
        .then_some(value)
}

/// The bytes of a value after quoted-string unescaping, each `None` where the
/// quoted-string is broken; `None` outright if `raw` is neither a non-empty
/// token nor a quoted-string.
fn unescape(raw: &[u8]) -> Option<impl Iterator<Item = Option<u8>> + '_> {
    let quoted = match raw {
        [QUOTE, inner @ .., QUOTE] => Some(inner),
        [QUOTE, ..] => return None,
        _ if http::is_token(raw) => None,
        _ => return None,
    };
    let (bytes, escapes) = match quoted {
        Some(inner) => (inner, true),
        None => (raw, false),
    };
    let mut iter = bytes.iter();
    Some(std::iter::from_fn(move || {
        let &byte = iter.next()?;
        if !escapes {
            return Some(Some(byte));
        }
        Some(match byte {
            // quoted-pair: the next byte stands for itself.
            ESCAPE => iter.next().copied(),
            // An unescaped quote ends the string early: `"1"0"`.
            QUOTE => None,
            other => Some(other),
        })
    }))
}

/// Splits at `separator` outside quoted-strings (where `\` escapes the next
/// byte). An unterminated quote runs to the end, which later parsing rejects.
fn split_unquoted(value: &[u8], separator: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let current = rest?;
        let mut in_quotes = false;
        let mut escaped = false;
        for (at, &byte) in current.iter().enumerate() {
            if in_quotes {
                if escaped {
                    escaped = false;
                } else if byte == ESCAPE {
                    escaped = true;
                } else if byte == QUOTE {
                    in_quotes = false;
                }
            } else if byte == QUOTE {
                in_quotes = true;
            } else if byte == separator {
                let (part, after) = current.split_at(at);
                rest = after.get(1..);
                return Some(part);
            }
        }
        rest = None;
        Some(current)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    /// Header field values, and the expected response suffix after [`BASE`]
    /// (`None`: no acceptable offer).
    type Case = (&'static [&'static str], Option<&'static str>);

    const CASES: &[Case] = &[
        // Nothing offered.
        (&[], None),
        (&[""], None),
        (&["x-webkit-deflate-frame"], None),
        // The plain offer and each flag.
        (&["permessage-deflate"], Some("")),
        (
            &["permessage-deflate; server_no_context_takeover"],
            Some(""),
        ),
        (
            &["permessage-deflate; client_no_context_takeover"],
            Some(""),
        ),
        (
            &["permessage-deflate; client_no_context_takeover; server_no_context_takeover"],
            Some(""),
        ),
        // server_max_window_bits: value required, 8 declined.
        (
            &["permessage-deflate; server_max_window_bits=10"],
            Some("; server_max_window_bits=10"),
        ),
        (
            &["permessage-deflate; server_max_window_bits=9"],
            Some("; server_max_window_bits=9"),
        ),
        (
            &["permessage-deflate; server_max_window_bits=15"],
            Some("; server_max_window_bits=15"),
        ),
        (&["permessage-deflate; server_max_window_bits=8"], None),
        (&["permessage-deflate; server_max_window_bits"], None),
        // client_max_window_bits: value optional, 8 accepted and echoed.
        (&["permessage-deflate; client_max_window_bits"], Some("")),
        (
            &["permessage-deflate; client_max_window_bits=12"],
            Some("; client_max_window_bits=12"),
        ),
        (
            &["permessage-deflate; client_max_window_bits=8"],
            Some("; client_max_window_bits=8"),
        ),
        (
            &["permessage-deflate; client_max_window_bits=15"],
            Some("; client_max_window_bits=15"),
        ),
        (
            &[
                "permessage-deflate; server_max_window_bits=11; client_max_window_bits=9; \
               server_no_context_takeover; client_no_context_takeover",
            ],
            Some("; server_max_window_bits=11; client_max_window_bits=9"),
        ),
        // Quoted values.
        (
            &[r#"permessage-deflate; server_max_window_bits="10""#],
            Some("; server_max_window_bits=10"),
        ),
        (
            &[r#"permessage-deflate; client_max_window_bits="9""#],
            Some("; client_max_window_bits=9"),
        ),
        (
            &[r#"permessage-deflate; server_max_window_bits="1\3""#],
            Some("; server_max_window_bits=13"),
        ),
        (&[r#"permessage-deflate; server_max_window_bits="""#], None),
        (
            &[r#"permessage-deflate; client_max_window_bits="1 0""#],
            None,
        ),
        (&[r#"permessage-deflate; server_max_window_bits="10"#], None),
        (
            &[r#"permessage-deflate; server_max_window_bits="1"0""#],
            None,
        ),
        (
            &[r#"permessage-deflate; server_max_window_bits=1"0""#],
            None,
        ),
        (
            &[r#"permessage-deflate; server_max_window_bits="10\"#],
            None,
        ),
        // Duplicates.
        (
            &["permessage-deflate; server_no_context_takeover; server_no_context_takeover"],
            None,
        ),
        (
            &["permessage-deflate; client_no_context_takeover; Client_No_Context_Takeover"],
            None,
        ),
        (
            &["permessage-deflate; server_max_window_bits=10; server_max_window_bits=10"],
            None,
        ),
        (
            &["permessage-deflate; client_max_window_bits; client_max_window_bits=10"],
            None,
        ),
        // Unknown parameters.
        (&["permessage-deflate; foo"], None),
        (&["permessage-deflate; foo=1"], None),
        (&["permessage-deflate; client_max_window"], None),
        // Bad values.
        (&["permessage-deflate; server_max_window_bits=0"], None),
        (&["permessage-deflate; server_max_window_bits=7"], None),
        (&["permessage-deflate; server_max_window_bits=16"], None),
        (&["permessage-deflate; client_max_window_bits=16"], None),
        (&["permessage-deflate; client_max_window_bits=7"], None),
        (&["permessage-deflate; server_max_window_bits=x"], None),
        (&[r#"permessage-deflate; client_max_window_bits="x""#], None),
        (&["permessage-deflate; server_max_window_bits=09"], None),
        (&["permessage-deflate; server_max_window_bits=+9"], None),
        (&["permessage-deflate; server_max_window_bits=-9"], None),
        (&["permessage-deflate; server_max_window_bits=100"], None),
        (&["permessage-deflate; server_max_window_bits=9.0"], None),
        (&["permessage-deflate; client_max_window_bits="], None),
        (&["permessage-deflate; server_no_context_takeover=1"], None),
        (
            &[r#"permessage-deflate; client_no_context_takeover="""#],
            None,
        ),
        // Malformed parameter lists.
        (&["permessage-deflate;"], None),
        (&["permessage-deflate;; server_no_context_takeover"], None),
        (&["permessage-deflate; =10"], None),
        (&["permessage-deflate; server max_window_bits=10"], None),
        (&["permessage-deflate server_no_context_takeover"], None),
        // Several offers: the first acceptable one wins.
        (
            &["permessage-deflate; server_max_window_bits=8, \
               permessage-deflate; server_max_window_bits=9"],
            Some("; server_max_window_bits=9"),
        ),
        (
            &["permessage-deflate; client_max_window_bits=10, permessage-deflate"],
            Some("; client_max_window_bits=10"),
        ),
        (
            &[
                "permessage-deflate; foo",
                "permessage-deflate; client_max_window_bits=11",
            ],
            Some("; client_max_window_bits=11"),
        ),
        (
            &["permessage-deflate; bar", "permessage-deflate; baz"],
            None,
        ),
        // Other extensions around it.
        (
            &["x-webkit-deflate-frame, permessage-deflate; client_max_window_bits"],
            Some(""),
        ),
        (
            &["foo; a=1; b=\"x\", permessage-deflate; server_max_window_bits=12, bar"],
            Some("; server_max_window_bits=12"),
        ),
        (&["\u{ff}\u{fe}, permessage-deflate"], Some("")),
        // Separators inside quotes separate nothing.
        (&[r#"foo; bar=",permessage-deflate""#], None),
        (
            &[r#"foo; bar=", permessage-deflate", permessage-deflate; server_max_window_bits=14"#],
            Some("; server_max_window_bits=14"),
        ),
        (
            &[r#"permessage-deflate; server_max_window_bits="1;0""#],
            None,
        ),
        // Names are case-insensitive.
        (
            &["PerMessage-Deflate; Server_Max_Window_Bits=11; CLIENT_NO_CONTEXT_TAKEOVER"],
            Some("; server_max_window_bits=11"),
        ),
        // Whitespace around every separator; empty list elements.
        (
            &["permessage-deflate ;\tserver_max_window_bits = 13 ; client_max_window_bits "],
            Some("; server_max_window_bits=13"),
        ),
        (&[" , ,permessage-deflate,"], Some("")),
        (
            &["\tpermessage-deflate\t;\tclient_max_window_bits\t=\t\"10\"\t"],
            Some("; client_max_window_bits=10"),
        ),
    ];

    #[test]
    fn negotiation_matrix() {
        for (headers, expected) in CASES {
            let params = negotiate(headers.iter().map(|h| h.as_bytes()));
            let response = params.map(|p| p.response_header());
            let expected = expected.map(|suffix| format!("{BASE}{suffix}"));
            assert_eq!(response, expected, "offer {headers:?}");
        }
    }

    #[test]
    fn params_carry_the_windows() {
        let offers: [&[u8]; 1] =
            [b"permessage-deflate; server_max_window_bits=10; client_max_window_bits=8"];
        let params = negotiate(offers).unwrap();
        assert_eq!(params.server_window(), WindowBits::new(10).unwrap());
        assert_eq!(params.client_max_window_bits(), Some(8));

        let offers: [&[u8]; 1] = [b"permessage-deflate; client_max_window_bits"];
        let params = negotiate(offers).unwrap();
        assert_eq!(params, Params::DEFAULT);
        assert_eq!(params.server_window(), WindowBits::MAX);
        assert_eq!(params.client_max_window_bits(), None);
    }

    #[test]
    fn params_fit_in_four_bytes() {
        assert_eq!(size_of::<Params>(), 4);
    }

    #[test]
    fn window_bits_range() {
        assert_eq!(WindowBits::new(8), None);
        assert_eq!(WindowBits::new(16), None);
        assert_eq!(WindowBits::new(9), Some(WindowBits::MIN));
        assert_eq!(WindowBits::new(15), Some(WindowBits::MAX));
        assert_eq!(WindowBits::MIN.get(), 9);
        assert!(WindowBits::MIN < WindowBits::MAX);
    }

    #[test]
    fn split_unquoted_keeps_quoted_separators() {
        let parts: Vec<&[u8]> = split_unquoted(br#"a="x,\"y,",b,"#, b',').collect();
        assert_eq!(parts, [&br#"a="x,\"y,""#[..], b"b", b""]);
    }
}
