//! The WebSocket opening handshake, server side (RFC 6455 §4.2).
//!
//! Owns: validating an upgrade request head and writing the 101 response or
//! the HTTP error that refuses it.
//! Must never: route, read sockets, or accept a request the RFC says to refuse.

use std::io::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::http::{self, RequestHead, has_token, list_elements, trim_ows};

/// The GUID appended to the client's key (§1.3).
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The only protocol version defined by RFC 6455.
pub const WEBSOCKET_VERSION: &str = "13";

/// How many random bytes a `Sec-WebSocket-Key` carries (§4.1).
const KEY_NONCE_LEN: usize = 16;

const METHOD_NOT_ALLOWED: Rejection = Rejection {
    status: 405,
    reason: "method not allowed: a WebSocket handshake uses GET",
};
const OLD_HTTP: Rejection = Rejection {
    status: 400,
    reason: "a WebSocket handshake needs HTTP/1.1 or later",
};
const MISSING_HOST: Rejection = Rejection {
    status: 400,
    reason: "missing Host header",
};
const REPEATED_HOST: Rejection = Rejection {
    status: 400,
    reason: "more than one Host header",
};
const HAS_BODY: Rejection = Rejection {
    status: 400,
    reason: "a handshake request must not have a body",
};
const NOT_WEBSOCKET: Rejection = Rejection {
    status: 426,
    reason: "this resource speaks WebSocket only: send Upgrade: websocket",
};
const NO_CONNECTION_UPGRADE: Rejection = Rejection {
    status: 400,
    reason: "Connection header must include Upgrade",
};
const BAD_VERSION: Rejection = Rejection {
    status: 426,
    reason: "unsupported WebSocket version: only 13 is supported",
};
const BAD_KEY: Rejection = Rejection {
    status: 400,
    reason: "Sec-WebSocket-Key must be base64 of 16 bytes",
};
const BAD_PROTOCOL: Rejection = Rejection {
    status: 400,
    reason: "invalid Sec-WebSocket-Protocol",
};

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` value.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key);
    sha1.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha1.digest().bytes())
}

/// A valid upgrade request, reduced to what the server needs to answer it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept: String,
    /// Subprotocols the client offered, in its order of preference.
    pub protocols: Vec<String>,
    /// The `Origin` header, if any (browsers always send it).
    pub origin: Option<String>,
    /// Raw `Sec-WebSocket-Extensions` values, for extension negotiation.
    pub extensions: Vec<Vec<u8>>,
}

/// A refused handshake: the status and a short plain-text reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}")]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
}

impl Rejection {
    /// Appends the HTTP error response (with `Connection: close`; plus
    /// `Allow: GET` for 405 and `Upgrade`/`Sec-WebSocket-Version` for 426).
    pub fn write_response(&self, out: &mut Vec<u8>) {
        let headers: &[(&str, &str)] = match self.status {
            405 => &[("Allow", "GET")],
            // §4.4: tell the client which version to retry with.
            426 => &[
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", WEBSOCKET_VERSION),
            ],
            _ => &[],
        };
        let body = format!("{}\n", self.reason);
        http::write_response(self.status, headers, body.as_bytes(), true, out);
    }
}

/// Checks every §4.2.1 requirement, in a fixed order.
pub fn validate(head: &RequestHead) -> Result<Upgrade, Rejection> {
    if head.method != "GET" {
        return Err(METHOD_NOT_ALLOWED);
    }
    if head.minor_version < 1 {
        return Err(OLD_HTTP);
    }
    match head.header_count("Host") {
        0 => return Err(MISSING_HOST),
        1 => {}
        _ => return Err(REPEATED_HOST),
    }
    if announces_body(head) {
        return Err(HAS_BODY);
    }
    if !head
        .header_values("Upgrade")
        .any(|v| has_token(v, "websocket"))
    {
        return Err(NOT_WEBSOCKET);
    }
    if !head
        .header_values("Connection")
        .any(|v| has_token(v, "Upgrade"))
    {
        return Err(NO_CONNECTION_UPGRADE);
    }
    check_version(head)?;
    let key = single_key(head)?;
    Ok(Upgrade {
        accept: accept_key(key),
        protocols: offered_protocols(head)?,
        origin: head
            .header("Origin")
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned),
        extensions: head
            .header_values("Sec-WebSocket-Extensions")
            .map(<[u8]>::to_vec)
            .collect(),
    })
}

/// A body would be read as WebSocket frames, so any hint of one is refused.
fn announces_body(head: &RequestHead) -> bool {
    let nonzero_length = head.header_values("Content-Length").any(|v| {
        let v = trim_ows(v);
        v.is_empty() || v.iter().any(|&b| b != b'0')
    });
    nonzero_length || head.header_count("Transfer-Encoding") > 0
}

/// Every `Sec-WebSocket-Version` field must say exactly 13.
fn check_version(head: &RequestHead) -> Result<(), Rejection> {
    let mut versions = head.header_values("Sec-WebSocket-Version").peekable();
    if versions.peek().is_none() {
        return Err(BAD_VERSION);
    }
    if versions.all(|v| trim_ows(v) == WEBSOCKET_VERSION.as_bytes()) {
        Ok(())
    } else {
        Err(BAD_VERSION)
    }
}

/// The one `Sec-WebSocket-Key`, trimmed, once it is known to encode a
/// 16-byte nonce.
fn single_key(head: &RequestHead) -> Result<&[u8], Rejection> {
    let mut keys = head.header_values("Sec-WebSocket-Key");
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(BAD_KEY);
    };
    let key = trim_ows(key);
    match BASE64.decode(key) {
        Ok(nonce) if nonce.len() == KEY_NONCE_LEN => Ok(key),
        _ => Err(BAD_KEY),
    }
}

/// Subprotocol tokens across all `Sec-WebSocket-Protocol` fields, in order.
fn offered_protocols(head: &RequestHead) -> Result<Vec<String>, Rejection> {
    let mut protocols = Vec::new();
    for value in head.header_values("Sec-WebSocket-Protocol") {
        for element in list_elements(value) {
            if !http::is_token(element) {
                return Err(BAD_PROTOCOL);
            }
            let token = std::str::from_utf8(element).map_err(|_| BAD_PROTOCOL)?;
            protocols.push(token.to_owned());
        }
    }
    Ok(protocols)
}

/// Appends the `101 Switching Protocols` response.
pub fn write_accept(
    upgrade: &Upgrade,
    protocol: Option<&str>,
    extensions: Option<&str>,
    out: &mut Vec<u8>,
) {
    // Writing into a Vec cannot fail, so the io::Result carries nothing.
    let _ = write!(
        out,
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        upgrade.accept
    );
    if let Some(protocol) = protocol {
        let _ = write!(out, "Sec-WebSocket-Protocol: {protocol}\r\n");
    }
    if let Some(extensions) = extensions {
        let _ = write!(out, "Sec-WebSocket-Extensions: {extensions}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Does `origin` pass an allow-list? An empty list allows every origin,
/// and a request without `Origin` (not from a browser) is not a cross-site
/// hijacking risk, so it passes too. Origins compare ASCII
/// case-insensitively, as RFC 6454 serializes scheme and host in lowercase.
pub fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    match origin {
        _ if allowed.is_empty() => true,
        None => true,
        Some(origin) => allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(origin.trim())),
    }
}

/// The subprotocol to answer with: the first one the client offered (in its
/// order of preference) that the route supports.
pub fn select_protocol<'a>(offered: &'a [String], supported: &[String]) -> Option<&'a str> {
    offered
        .iter()
        .find(|p| supported.iter().any(|s| s == *p))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::http::HeadReader;

    const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    /// The minimal valid upgrade request's fields.
    const VALID: &[(&str, &str)] = &[
        ("Host", "server.example.com"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", RFC_KEY),
        ("Sec-WebSocket-Version", "13"),
    ];

    /// Method, HTTP minor version, header fields, and the expected refusal.
    type Case<'a> = (&'a str, u8, Vec<(&'a str, &'a str)>, Rejection);

    fn request(method: &str, minor_version: u8, headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: method.into(),
            path: "/chat".into(),
            query: None,
            minor_version,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    /// The valid fields with `name` removed (case-insensitively) and `extra`
    /// appended.
    fn fields<'a>(remove: &[&str], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        VALID
            .iter()
            .filter(|(n, _)| !remove.iter().any(|r| r.eq_ignore_ascii_case(n)))
            .chain(extra)
            .copied()
            .collect()
    }

    fn get(headers: &[(&str, &str)]) -> Result<Upgrade, Rejection> {
        validate(&request("GET", 1, headers))
    }

    fn response_text(rejection: Rejection) -> String {
        let mut out = Vec::new();
        rejection.write_response(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn accept_key_matches_the_rfc_sample() {
        assert_eq!(accept_key(RFC_KEY.as_bytes()), RFC_ACCEPT);
    }

    #[test]
    fn rfc_sample_request_is_accepted() {
        let input = b"GET /chat HTTP/1.1\r\n\
            Host: server.example.com\r\n\
            Upgrade: websocket\r\n\
            Connection: Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Origin: http://example.com\r\n\
            Sec-WebSocket-Protocol: chat, superchat\r\n\
            Sec-WebSocket-Version: 13\r\n\r\n";
        let (head, _) = HeadReader::new().feed(input).unwrap().unwrap();
        assert_eq!(
            validate(&head),
            Ok(Upgrade {
                accept: RFC_ACCEPT.into(),
                protocols: vec!["chat".into(), "superchat".into()],
                origin: Some("http://example.com".into()),
                extensions: vec![],
            })
        );
    }

    #[test]
    fn each_rule_refuses_with_its_status_and_reason() {
        let cases: &[Case] = &[
            ("POST", 1, fields(&[], &[]), METHOD_NOT_ALLOWED),
            ("get", 1, fields(&[], &[]), METHOD_NOT_ALLOWED),
            ("GET", 0, fields(&[], &[]), OLD_HTTP),
            ("GET", 1, fields(&["Host"], &[]), MISSING_HOST),
            ("GET", 1, fields(&[], &[("host", "b")]), REPEATED_HOST),
            ("GET", 1, fields(&[], &[("Content-Length", "5")]), HAS_BODY),
            ("GET", 1, fields(&[], &[("Content-Length", "")]), HAS_BODY),
            (
                "GET",
                1,
                fields(&[], &[("Content-Length", "0, 0")]),
                HAS_BODY,
            ),
            (
                "GET",
                1,
                fields(&[], &[("Transfer-Encoding", "chunked")]),
                HAS_BODY,
            ),
            (
                "GET",
                1,
                fields(&[], &[("transfer-encoding", "identity")]),
                HAS_BODY,
            ),
            ("GET", 1, fields(&["Upgrade"], &[]), NOT_WEBSOCKET),
            (
                "GET",
                1,
                fields(&["Upgrade"], &[("Upgrade", "h2c")]),
                NOT_WEBSOCKET,
            ),
            (
                "GET",
                1,
                fields(&["Upgrade"], &[("Upgrade", "websocket2")]),
                NOT_WEBSOCKET,
            ),
            (
                "GET",
                1,
                fields(&["Connection"], &[]),
                NO_CONNECTION_UPGRADE,
            ),
            (
                "GET",
                1,
                fields(&["Connection"], &[("Connection", "keep-alive")]),
                NO_CONNECTION_UPGRADE,
            ),
            (
                "GET",
                1,
                fields(&["Connection"], &[("Connection", "upgraded")]),
                NO_CONNECTION_UPGRADE,
            ),
            (
                "GET",
                1,
                fields(&["Sec-WebSocket-Version"], &[]),
                BAD_VERSION,
            ),
            (
                "GET",
                1,
                fields(
                    &["Sec-WebSocket-Version"],
                    &[("Sec-WebSocket-Version", "8")],
                ),
                BAD_VERSION,
            ),
            (
                "GET",
                1,
                fields(
                    &["Sec-WebSocket-Version"],
                    &[("Sec-WebSocket-Version", "13, 8")],
                ),
                BAD_VERSION,
            ),
            (
                "GET",
                1,
                fields(&[], &[("Sec-WebSocket-Version", "8")]),
                BAD_VERSION,
            ),
            ("GET", 1, fields(&["Sec-WebSocket-Key"], &[]), BAD_KEY),
            (
                "GET",
                1,
                fields(&[], &[("Sec-WebSocket-Key", RFC_KEY)]),
                BAD_KEY,
            ),
            (
                "GET",
                1,
                fields(&[], &[("Sec-WebSocket-Protocol", "chat/1")]),
                BAD_PROTOCOL,
            ),
        ];
        for (method, minor, headers, expected) in cases {
            assert_eq!(
                validate(&request(method, *minor, headers)),
                Err(*expected),
                "{method} 1.{minor} {headers:?}"
            );
        }
    }

    #[test]
    fn rules_apply_in_order_when_several_fail() {
        let cases: &[Case] = &[
            ("POST", 0, vec![], METHOD_NOT_ALLOWED),
            ("GET", 0, fields(&["Host"], &[]), OLD_HTTP),
            (
                "GET",
                1,
                fields(&["Host", "Upgrade"], &[("Content-Length", "1")]),
                MISSING_HOST,
            ),
            (
                "GET",
                1,
                fields(&["Upgrade"], &[("Content-Length", "1")]),
                HAS_BODY,
            ),
            (
                "GET",
                1,
                fields(&["Upgrade", "Connection"], &[]),
                NOT_WEBSOCKET,
            ),
            (
                "GET",
                1,
                fields(&["Connection", "Sec-WebSocket-Version"], &[]),
                NO_CONNECTION_UPGRADE,
            ),
            (
                "GET",
                1,
                fields(&["Sec-WebSocket-Version", "Sec-WebSocket-Key"], &[]),
                BAD_VERSION,
            ),
            (
                "GET",
                1,
                fields(&["Sec-WebSocket-Key"], &[("Sec-WebSocket-Protocol", "a b")]),
                BAD_KEY,
            ),
        ];
        for (method, minor, headers, expected) in cases {
            assert_eq!(
                validate(&request(method, *minor, headers)),
                Err(*expected),
                "{method} 1.{minor} {headers:?}"
            );
        }
    }

    #[test]
    fn names_and_tokens_are_case_insensitive() {
        let upgrade = get(&[
            ("HOST", "a"),
            ("upgrade", "WebSocket"),
            ("CONNECTION", "UPGRADE"),
            ("sec-websocket-key", RFC_KEY),
            ("SEC-WEBSOCKET-VERSION", "13"),
            ("origin", "https://a.example"),
        ])
        .unwrap();
        assert_eq!(upgrade.accept, RFC_ACCEPT);
        assert_eq!(upgrade.origin.as_deref(), Some("https://a.example"));
    }

    #[test]
    fn tokens_may_sit_in_any_of_several_fields() {
        let headers = fields(
            &["Upgrade", "Connection"],
            &[
                ("Connection", "keep-alive"),
                ("Upgrade", "h2c, foo"),
                ("Connection", "close, Upgrade"),
                ("Upgrade", "websocket"),
            ],
        );
        assert!(get(&headers).is_ok());

        let headers = fields(&["Connection"], &[("Connection", "keep-alive,upgrade ")]);
        assert!(get(&headers).is_ok());
    }

    #[test]
    fn zero_content_length_is_not_a_body() {
        assert!(get(&fields(&[], &[("Content-Length", "0")])).is_ok());
        assert!(get(&fields(&[], &[("Content-Length", "00")])).is_ok());
    }

    #[test]
    fn version_may_repeat_with_the_same_value() {
        let headers = fields(&[], &[("Sec-WebSocket-Version", "13")]);
        assert!(get(&headers).is_ok());
    }

    #[test]
    fn key_must_decode_to_sixteen_bytes() {
        let short = BASE64.encode([7u8; KEY_NONCE_LEN - 1]);
        let long = BASE64.encode([7u8; KEY_NONCE_LEN + 1]);
        let unpadded = RFC_KEY.trim_end_matches('=');
        let bad_keys = [
            short.as_str(),
            long.as_str(),
            unpadded,
            "!!!!!!!!!!!!!!!!!!!!!!==",
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25jZQ==dGhl",
            "dGhlIHNhbXBs ZSBub25jZQ==",
            "",
        ];
        for key in bad_keys {
            let headers = fields(&["Sec-WebSocket-Key"], &[("Sec-WebSocket-Key", key)]);
            assert_eq!(get(&headers), Err(BAD_KEY), "{key:?}");
        }
    }

    #[test]
    fn key_is_trimmed_before_use() {
        let padded = format!(" \t{RFC_KEY} ");
        let headers = fields(&["Sec-WebSocket-Key"], &[("Sec-WebSocket-Key", &padded)]);
        assert_eq!(get(&headers).unwrap().accept, RFC_ACCEPT);
    }

    #[test]
    fn protocols_are_collected_across_fields_in_order() {
        let cases: &[(&[&str], &[&str])] = &[
            (&[], &[]),
            (&[""], &[]),
            (&["chat"], &["chat"]),
            (&["chat, superchat"], &["chat", "superchat"]),
            (&[" a ,, b,", "c", " ,d"], &["a", "b", "c", "d"]),
            (&["v1.json.example~x"], &["v1.json.example~x"]),
        ];
        for &(values, expected) in cases {
            let extra: Vec<(&str, &str)> = values
                .iter()
                .map(|v| ("Sec-WebSocket-Protocol", *v))
                .collect();
            assert_eq!(
                get(&fields(&[], &extra)).map(|u| u.protocols),
                Ok(expected.iter().map(|p| p.to_string()).collect()),
                "{values:?}"
            );
        }
    }

    #[test]
    fn invalid_protocol_tokens_are_refused() {
        for value in ["chat/1", "a b", "\"chat\"", "chat;v=1", "caf\u{e9}"] {
            let headers = fields(&[], &[("Sec-WebSocket-Protocol", value)]);
            assert_eq!(get(&headers), Err(BAD_PROTOCOL), "{value:?}");
        }
    }

    #[test]
    fn extensions_are_kept_raw_and_origin_must_be_utf8() {
        let mut head = request(
            "GET",
            1,
            &fields(
                &[],
                &[
                    (
                        "Sec-WebSocket-Extensions",
                        "permessage-deflate; client_max_window_bits",
                    ),
                    ("Sec-WebSocket-Extensions", "x-foo"),
                ],
            ),
        );
        head.headers
            .push(("Origin".into(), b"http://\xff".to_vec()));
        let upgrade = validate(&head).unwrap();
        assert_eq!(
            upgrade.extensions,
            [
                b"permessage-deflate; client_max_window_bits".to_vec(),
                b"x-foo".to_vec()
            ]
        );
        assert_eq!(upgrade.origin, None);
    }

    #[test]
    fn method_not_allowed_response_names_get() {
        assert_eq!(
            response_text(METHOD_NOT_ALLOWED),
            "HTTP/1.1 405 Method Not Allowed\r\n\
             Allow: GET\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 51\r\n\
             Connection: close\r\n\
             \r\n\
             method not allowed: a WebSocket handshake uses GET\n"
        );
    }

    #[test]
    fn upgrade_required_response_names_the_version() {
        let rejection = get(&fields(
            &["Sec-WebSocket-Version"],
            &[("Sec-WebSocket-Version", "8")],
        ))
        .unwrap_err();
        assert_eq!(rejection.status, 426);
        let text = response_text(rejection);
        assert!(
            text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
        assert!(text.contains("\r\nUpgrade: websocket\r\n"), "{text}");
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        assert!(
            text.ends_with(&format!("\r\n\r\n{}\n", BAD_VERSION.reason)),
            "{text}"
        );
    }

    #[test]
    fn bad_request_response_has_only_the_common_headers() {
        let mut out = Vec::new();
        MISSING_HOST.write_response(&mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 400 Bad Request\r\n\
              Content-Type: text/plain; charset=utf-8\r\n\
              Content-Length: 20\r\n\
              Connection: close\r\n\
              \r\n\
              missing Host header\n"
        );
    }

    #[test]
    fn rejection_displays_status_and_reason() {
        assert_eq!(MISSING_HOST.to_string(), "400 missing Host header");
    }

    #[test]
    fn accept_response_is_byte_exact() {
        let upgrade = get(VALID).unwrap();
        let mut out = Vec::new();
        write_accept(&upgrade, None, None, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\n\
              Upgrade: websocket\r\n\
              Connection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
              \r\n"
        );

        let mut out = Vec::new();
        write_accept(&upgrade, Some("chat"), Some("permessage-deflate"), &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\n\
              Upgrade: websocket\r\n\
              Connection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
              Sec-WebSocket-Protocol: chat\r\n\
              Sec-WebSocket-Extensions: permessage-deflate\r\n\
              \r\n"
        );
    }

    #[test]
    fn origin_allow_list() {
        let allowed = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(Some("https://evil.example"), &[]));
        assert!(origin_allowed(None, &allowed));
        assert!(origin_allowed(Some("https://app.example"), &allowed));
        assert!(origin_allowed(Some("HTTPS://APP.EXAMPLE"), &allowed));
        assert!(!origin_allowed(Some("https://app.example:8443"), &allowed));
        assert!(!origin_allowed(Some("http://app.example"), &allowed));
        assert!(!origin_allowed(Some("null"), &allowed));
    }

    #[test]
    fn protocol_is_the_clients_first_supported_choice() {
        let offered = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let supported = offered(&["chat.v2", "chat.v1"]);
        assert_eq!(
            select_protocol(&offered(&["chat.v1", "chat.v2"]), &supported),
            Some("chat.v1")
        );
        assert_eq!(
            select_protocol(&offered(&["x", "chat.v2"]), &supported),
            Some("chat.v2")
        );
        assert_eq!(select_protocol(&offered(&["x"]), &supported), None);
        assert_eq!(select_protocol(&offered(&[]), &supported), None);
        // Protocol tokens are case-sensitive (RFC 6455 §11.5 registry values).
        assert_eq!(select_protocol(&offered(&["CHAT.V1"]), &supported), None);
    }
}
