//! Signed-token (JWT) authorisation of subscribers and publishers, sans-IO.
//!
//! Owns: finding a token in a request head ([`token`]), the immutable key
//! set a `[auth.<name>]` table loads ([`keys`]), verifying a token against
//! it with the time passed in ([`verify`]), and channel grants
//! ([`grants`]). Why a token was refused is a [`Failure`]: its label goes to
//! `/metrics`, its text to the debug log.
//! Must never: read a clock or a socket, log or count a token's text,
//! take the accepted algorithm from a token's header, or verify a
//! signature itself (the `jsonwebtoken` crate does, on `ring`).
//!
//! The crate: `jsonwebtoken` 9.x verifies with `ring`, the provider rustls
//! already links, so no second crypto library or C build enters the tree
//! (10.x and later moved to `aws-lc-rs` or the RustCrypto crates). Its
//! `use_pem` feature adds `pem` and `simple_asn1` (pure Rust, for reading
//! PEM public keys). Only its keys and its signature check
//! (`jsonwebtoken::crypto::verify`) are used: its `decode` reads the system
//! clock for `exp` and allocates a claims map per token, so [`verify`]
//! decodes header and payload itself (base64 and serde_json, into stack
//! buffers) and checks `exp`, `nbf`, `iat`, `aud` and `iss` against the
//! `now` it is given: deadlines stay testable on a virtual clock.

pub(crate) mod grants;
pub(crate) mod keys;
pub(crate) mod token;
pub(crate) mod verify;

use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) use grants::Grants;
pub(crate) use verify::verify;

/// The close code sent to an open connection whose token has expired
/// (private-use range of RFC 6455 §7.4.2): reconnect with a fresh token.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// The reason sent with [`CLOSE_TOKEN_EXPIRED`].
pub(crate) const TOKEN_EXPIRED_REASON: &str = "token expired";

/// Why a request's token was not accepted. A metric label and a debug-log
/// line each; never the token's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Failure {
    #[error("no token in the Authorization header, the cookie or the token parameter")]
    Missing,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token header names another algorithm than the key's")]
    Algorithm,
    #[error("token names no key of the key set (kid)")]
    UnknownKey,
    #[error("bad signature")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf or iat in the future)")]
    NotYetValid,
    #[error("token lacks a required claim or has one of the wrong type")]
    Claims,
    #[error("token is for another audience")]
    Audience,
    #[error("token is from another issuer")]
    Issuer,
    #[error("token does not grant a requested channel")]
    NotGranted,
    #[error(
        "the request carries a token twice with different values, or several Authorization headers"
    )]
    Ambiguous,
}

impl Failure {
    /// Every failure, in the order `/metrics` lists them.
    pub(crate) const ALL: [Failure; 12] = [
        Failure::Missing,
        Failure::Malformed,
        Failure::Algorithm,
        Failure::UnknownKey,
        Failure::Signature,
        Failure::Expired,
        Failure::NotYetValid,
        Failure::Claims,
        Failure::Audience,
        Failure::Issuer,
        Failure::NotGranted,
        Failure::Ambiguous,
    ];

    /// The `reason` label in `/metrics`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::Algorithm => "algorithm",
            Failure::UnknownKey => "unknown_key",
            Failure::Signature => "signature",
            Failure::Expired => "expired",
            Failure::NotYetValid => "not_yet_valid",
            Failure::Claims => "claims",
            Failure::Audience => "audience",
            Failure::Issuer => "issuer",
            Failure::NotGranted => "not_granted",
            Failure::Ambiguous => "ambiguous",
        }
    }

    /// The HTTP status of the refusal: 403 for a valid token that does not
    /// grant enough, 401 for everything else.
    pub(crate) fn status(self) -> u16 {
        match self {
            Failure::NotGranted => 403,
            _ => 401,
        }
    }

    /// The response body: nothing that helps a forger.
    pub(crate) fn body(self) -> &'static str {
        match self {
            Failure::NotGranted => "forbidden\n",
            _ => "unauthorized\n",
        }
    }
}

/// Fuzzing entry point: looks for a token in `head` (every place, with
/// cookie name `auth`) and verifies whatever is found, and `token` itself,
/// with an HS256 key set held in memory. Never panics, whatever the input.
#[doc(hidden)]
pub fn fuzz_token(head: &crate::protocol::http::RequestHead, token: &str) {
    use std::sync::OnceLock;
    static TABLE: OnceLock<Option<crate::config::AuthConfig>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let keys = keys::KeySet::from_secret(keys::Algorithm::HS256, &[b'k'; 32]).ok()?;
        let text = "algorithm = \"HS256\"\nsecret_file = \"/dev/null\"\ncookie = \"auth\"\nrelay_claim = \"relay\"\naudience = \"a\"\n";
        let mut table: crate::config::AuthConfig = toml::from_str(text).ok()?;
        table.keys = keys;
        Some(table)
    });
    let Some(table) = table else {
        return;
    };
    if let Ok((found, _)) = token::find(head, table.cookie.as_deref()) {
        let _ = verify(&found, table, 1_800_000_000, |_| Ok(()));
    }
    let _ = verify(token, table, 1_800_000_000, |v| {
        let _ = (
            v.channels.allows("news"),
            v.relay.as_ref().map(|r| r.allows("x")),
        );
        Ok(())
    });
}

/// The wall clock in milliseconds since the Unix epoch, for the loop to
/// pass in (this module never calls it itself).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
