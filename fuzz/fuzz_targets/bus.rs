//! The cluster's own parsing: the envelope a node reads back from Redis
//! (anyone with access to Redis can publish to our channels) and the
//! `redis_url` setting. RESP itself is parsed by `redis-protocol`.
//!
//! Invariants: no panic; an accepted envelope (version 1, or version 2
//! with its position) writes back to the very bytes it came from, a text
//! one has a UTF-8 payload, and the position read from the header alone is
//! the parsed one; an accepted URL
//! never shows its password in `Display` or `Debug`, and its user name
//! (which is shown) holds no control characters.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wshub::fuzzing::{Envelope, RedisUrl};

fuzz_target!(|data: &[u8]| {
    let peeked = Envelope::peek_position(data);
    if let Ok(envelope) = Envelope::parse(data) {
        assert!(envelope.binary || std::str::from_utf8(envelope.payload).is_ok());
        assert_eq!(peeked, envelope.position);
        let mut out = Vec::new();
        envelope.write(&mut out);
        assert_eq!(out, data);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(url) = RedisUrl::parse(text)
    {
        assert!(
            !url.username
                .as_deref()
                .unwrap_or_default()
                .contains(char::is_control)
        );
        // An alphanumeric password cannot straddle the separators
        // around the mask, so it shows only if it is leaked or is
        // part of what the URL shows without it.
        let mut without = url.clone();
        without.password = None;
        if let Some(password) = url
            .password
            .as_deref()
            .filter(|p| p.len() >= 4 && p.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            if !without.to_string().contains(password) {
                assert!(!url.to_string().contains(password));
            }
            let masked = "Some(<redacted>)";
            if !format!("{without:?}").contains(password) && !masked.contains(password) {
                assert!(!format!("{url:?}").contains(password));
            }
        }
    }
});
