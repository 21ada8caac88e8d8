//! Verifying a token against a key set and the rules of its table.
//!
//! Owns: the order of the checks (header, key, signature, then the claims
//! `exp`, `nbf`, `iat`, `aud`, `iss`, then the grant claims) and what a
//! verified token yields.
//! Must never: read the clock (`now` comes in), accept an algorithm other
//! than the key set's, parse a payload whose signature did not verify, or
//! allocate more than it must: the header and payload are decoded into
//! buffers on the stack and the claims borrow from them, since every
//! handshake on an auth route comes through here (heap churn per
//! handshake showed up as idle memory per connection).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::error::Category;

use super::keys::Algorithm;
use super::{Failure, Grants, grants::Text};
use crate::config::AuthConfig;

/// Largest decoded JOSE header accepted.
const MAX_HEADER: usize = 1024;
/// Largest decoded payload accepted: more than a token in a request head
/// (8 KiB, base64) can carry.
const MAX_PAYLOAD: usize = 6 * 1024;

/// What a verified token says; borrowed from the decoded token.
#[derive(Debug)]
pub(crate) struct Verified<'a> {
    /// When it stops being valid, leeway included (Unix seconds); `None`
    /// without `exp` (allowed only with `require_exp = false`).
    pub expires: Option<u64>,
    /// The `sub` claim, for the log.
    pub subject: Option<Text<'a>>,
    /// The channels claim (subscribe).
    pub channels: Grants<'a>,
    /// The publish claim (the publish API with `publish_auth`).
    pub publish: Grants<'a>,
    /// The relay claim, when the table names one.
    pub relay: Option<Grants<'a>>,
}

/// The name a token's header gives an algorithm (RFC 7518).
fn name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// The JOSE header fields that matter here.
#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: Text<'a>,
    #[serde(borrow, default)]
    kid: Option<Text<'a>>,
    /// Critical extensions (RFC 7515 §4.1.11): none is understood here, so
    /// a header with `crit` is refused.
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

/// Verifies `token` with the keys and rules of `auth` at `now` (Unix
/// seconds), then hands what it says to `check` (whose result is returned).
pub(crate) fn verify<R>(
    token: &str,
    auth: &AuthConfig,
    now: u64,
    check: impl FnOnce(&Verified<'_>) -> Result<R, Failure>,
) -> Result<R, Failure> {
    let Some(algorithm) = auth.keys.algorithm() else {
        return Err(Failure::UnknownKey);
    };
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Failure::Malformed);
    };
    let mut header_buf = [0u8; MAX_HEADER];
    let header_len = URL_SAFE_NO_PAD
        .decode_slice(header_b64, &mut header_buf)
        .map_err(|_| Failure::Malformed)?;
    let header: Header<'_> =
        serde_json::from_slice(&header_buf[..header_len]).map_err(|_| Failure::Malformed)?;
    if header.crit.is_some() {
        return Err(Failure::Malformed);
    }
    // Pinned by the key set: "none", or any other name, goes no further.
    if *header.alg != *name(algorithm) {
        return Err(Failure::Algorithm);
    }
    let key = auth
        .keys
        .select(header.kid.as_deref())
        .ok_or(Failure::UnknownKey)?;
    // What the signature covers: `header.payload`.
    let signed = &token[..header_b64.len() + 1 + payload.len()];
    match crypto::verify(signature, signed.as_bytes(), key, algorithm) {
        Ok(true) => {}
        Ok(false) => return Err(Failure::Signature),
        Err(_) => return Err(Failure::Malformed),
    }
    let mut payload_buf = [0u8; MAX_PAYLOAD];
    let payload_len = URL_SAFE_NO_PAD
        .decode_slice(payload, &mut payload_buf)
        .map_err(|_| Failure::Malformed)?;
    let seed = ClaimsSeed {
        channels: &auth.channels_claim,
        publish: &auth.publish_claim,
        relay: auth.relay_claim.as_deref(),
        audience: auth.audience.as_deref(),
    };
    let mut de = serde_json::Deserializer::from_slice(&payload_buf[..payload_len]);
    let claims = seed
        .deserialize(&mut de)
        .and_then(|c| de.end().map(|()| c))
        .map_err(|e| match e.classify() {
            Category::Data => Failure::Claims,
            _ => Failure::Malformed,
        })?;
    let verified = claims.check(auth, now)?;
    check(&verified)
}

/// The registered and configured claims of a payload, as read.
#[derive(Default)]
struct Claims<'a> {
    exp: Option<u64>,
    nbf: Option<u64>,
    iat: Option<u64>,
    /// Whether `aud` names the configured audience (`None` without `aud`;
    /// false for any `aud` when none is configured).
    aud_matches: Option<bool>,
    iss: Option<Text<'a>>,
    sub: Option<Text<'a>>,
    channels: Option<Grants<'a>>,
    publish: Option<Grants<'a>>,
    relay: Option<Grants<'a>>,
}

impl<'a> Claims<'a> {
    fn check(self, auth: &AuthConfig, now: u64) -> Result<Verified<'a>, Failure> {
        let leeway = auth.leeway.as_secs();
        let expires = self.exp.map(|exp| exp.saturating_add(leeway));
        match expires {
            None if auth.require_exp => return Err(Failure::Claims),
            Some(deadline) if now >= deadline => return Err(Failure::Expired),
            _ => {}
        }
        if [self.nbf, self.iat]
            .into_iter()
            .flatten()
            .any(|t| t > now.saturating_add(leeway))
        {
            return Err(Failure::NotYetValid);
        }
        // RFC 7519 §4.1.3: with `aud`, this hub must be named in it; a
        // token with `aud` is refused where no audience is configured.
        if !self.aud_matches.unwrap_or(auth.audience.is_none()) {
            return Err(Failure::Audience);
        }
        if let Some(issuer) = &auth.issuer
            && self.iss.as_deref() != Some(issuer.as_str())
        {
            return Err(Failure::Issuer);
        }
        Ok(Verified {
            expires,
            subject: self.sub,
            channels: self.channels.unwrap_or_default(),
            publish: self.publish.unwrap_or_default(),
            relay: auth
                .relay_claim
                .as_ref()
                .map(|_| self.relay.unwrap_or_default()),
        })
    }
}

/// Reads the claims object, keeping what the table asks for; the claim
/// names come from the table.
struct ClaimsSeed<'n> {
    channels: &'n str,
    publish: &'n str,
    relay: Option<&'n str>,
    audience: Option<&'n str>,
}

impl<'de> DeserializeSeed<'de> for ClaimsSeed<'_> {
    type Value = Claims<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Claims<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ClaimsSeed<'_> {
    type Value = Claims<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of claims")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claims<'de>, A::Error> {
        let mut c = Claims::default();
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match &*key {
                k if k == self.channels => c.channels = Some(map.next_value()?),
                k if k == self.publish => c.publish = Some(map.next_value()?),
                k if Some(k) == self.relay => c.relay = Some(map.next_value()?),
                "exp" => c.exp = Some(map.next_value::<NumericDate>()?.0),
                "nbf" => c.nbf = Some(map.next_value::<NumericDate>()?.0),
                "iat" => c.iat = Some(map.next_value::<NumericDate>()?.0),
                "iss" => c.iss = Some(map.next_value()?),
                "sub" => c.sub = Some(map.next_value()?),
                "aud" => {
                    c.aud_matches = Some(map.next_value_seed(AudienceSeed(self.audience))?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(c)
    }
}

/// A NumericDate (RFC 7519 §2): seconds, possibly fractional; negative
/// values count as 0.
struct NumericDate(u64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NumericDate, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumericDate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a NumericDate")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumericDate, E> {
                Ok(NumericDate(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumericDate, E> {
                Ok(NumericDate(u64::try_from(v).unwrap_or(0)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumericDate, E> {
                if v.is_finite() {
                    // Saturating: fractions drop, negatives become 0.
                    Ok(NumericDate(v as u64))
                } else {
                    Err(E::custom("not a finite number"))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `aud`: one string or a list; whether it names the configured audience
/// (never, when none is configured).
struct AudienceSeed<'n>(Option<&'n str>);

impl<'de> DeserializeSeed<'de> for AudienceSeed<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AudienceSeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an audience or a list of them")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(self.0 == Some(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(aud) = seq.next_element::<Text<'de>>()? {
            found |= self.0 == Some(&*aud);
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    //! The claim checks on a fixed clock, with tokens signed by the crate's
    //! own encoder (the wire tests use PyJWT, an independent one).

    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::{Value, json};

    use super::*;
    use crate::auth::keys::{Algorithm, KeySet};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn table(adjust: impl FnOnce(&mut AuthConfig)) -> AuthConfig {
        let text = "algorithm = \"HS256\"\nsecret_file = \"unused\"\n";
        let mut t: AuthConfig = toml::from_str(text).unwrap();
        t.keys = KeySet::from_secret(Algorithm::HS256, SECRET).unwrap();
        adjust(&mut t);
        t
    }

    fn sign(claims: &Value) -> String {
        encode(
            &Header::default(),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    /// What a verification says, owned, for comparisons.
    #[derive(Debug, PartialEq)]
    struct Seen {
        expires: Option<u64>,
        subject: Option<String>,
        /// The channels claim grants `b.x` but not `c`.
        grants_b_only: bool,
        relay_allows_a: Option<bool>,
    }

    fn run(token: &str, t: &AuthConfig) -> Result<Seen, Failure> {
        verify(token, t, NOW, |v| {
            Ok(Seen {
                expires: v.expires,
                subject: v.subject.as_ref().map(|s| s.0.to_string()),
                grants_b_only: v.channels.allows("b.x") && !v.channels.allows("c"),
                relay_allows_a: v.relay.as_ref().map(|r| r.allows("a")),
            })
        })
    }

    fn check(claims: Value, t: &AuthConfig) -> Result<Seen, Failure> {
        run(&sign(&claims), t)
    }

    #[test]
    fn a_valid_token_yields_its_expiry_subject_and_grants() {
        let t = table(|t| t.relay_claim = Some("relay".into()));
        let v = check(
            json!({"exp": NOW + 60, "sub": "u42", "channels": ["a", "b.*"], "relay": "a"}),
            &t,
        )
        .unwrap();
        assert_eq!(v.expires, Some(NOW + 65), "exp plus the 5 s leeway");
        assert_eq!(v.subject.as_deref(), Some("u42"));
        assert!(v.grants_b_only);
        assert_eq!(v.relay_allows_a, Some(true));
    }

    #[test]
    fn time_claims_are_checked_with_the_leeway() {
        let t = table(|_| {});
        let cases = [
            (json!({"exp": NOW - 5}), Err(Failure::Expired)),
            (json!({"exp": NOW - 4}), Ok(())),
            (
                json!({"exp": NOW + 60, "nbf": NOW + 6}),
                Err(Failure::NotYetValid),
            ),
            (json!({"exp": NOW + 60, "nbf": NOW + 5}), Ok(())),
            (
                json!({"exp": NOW + 60, "iat": NOW + 60}),
                Err(Failure::NotYetValid),
            ),
            (json!({"exp": (NOW + 60) as f64 + 0.5}), Ok(())),
            (json!({"exp": "tomorrow"}), Err(Failure::Claims)),
            (json!({"sub": "no exp"}), Err(Failure::Claims)),
            (
                json!({"exp": NOW + 60, "channels": 7}),
                Err(Failure::Claims),
            ),
        ];
        for (claims, want) in cases {
            assert_eq!(check(claims.clone(), &t).map(|_| ()), want, "{claims}");
        }
        let lax = table(|t| t.require_exp = false);
        assert_eq!(check(json!({}), &lax).unwrap().expires, None);
    }

    #[test]
    fn audience_and_issuer_must_match_when_configured() {
        let t = table(|t| {
            t.audience = Some("hub".into());
            t.issuer = Some("backend".into());
        });
        let ok = json!({"exp": NOW + 9, "aud": ["x", "hub"], "iss": "backend"});
        assert!(check(ok, &t).is_ok());
        let cases = [
            (
                json!({"exp": NOW + 9, "aud": "x", "iss": "backend"}),
                Failure::Audience,
            ),
            (json!({"exp": NOW + 9, "iss": "backend"}), Failure::Audience),
            (
                json!({"exp": NOW + 9, "aud": "hub", "iss": "other"}),
                Failure::Issuer,
            ),
        ];
        for (claims, want) in cases {
            assert_eq!(check(claims, &t).unwrap_err(), want);
        }
        // RFC 7519 §4.1.3: a token for some audience is refused where none
        // is configured (it was meant for another service sharing the key).
        let open = table(|_| {});
        assert!(check(json!({"exp": NOW + 9}), &open).is_ok());
        for aud in [json!("hub"), json!(["hub"]), json!([])] {
            let claims = json!({"exp": NOW + 9, "aud": aud});
            assert_eq!(check(claims, &open).unwrap_err(), Failure::Audience);
        }
    }

    #[test]
    fn header_signature_and_shape_failures() {
        let t = table(|_| {});
        let good = sign(&json!({"exp": NOW + 9}));
        let (head_payload, sig) = good.rsplit_once('.').unwrap();
        let mut bad_sig = sig.to_owned();
        bad_sig.replace_range(..1, if sig.starts_with('A') { "B" } else { "A" });
        let forged = format!("{head_payload}.{bad_sig}");
        assert_eq!(run(&forged, &t), Err(Failure::Signature));
        assert_eq!(run(&good[..good.len() - 3], &t), Err(Failure::Signature));
        for junk in ["", "a.b", "a.b.c", "...", "not a token"] {
            assert_eq!(run(junk, &t), Err(Failure::Malformed), "{junk}");
        }
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &json!({"exp": NOW + 9}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(run(&hs512, &t), Err(Failure::Algorithm));
        // {"alg":"none"} with an empty signature.
        let none = "eyJhbGciOiJub25lIn0.eyJleHAiOjk5OTk5OTk5OTl9.";
        assert_eq!(run(none, &t), Err(Failure::Algorithm));
        // A signed payload that is not JSON, or not an object.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#);
        for payload in [&b"not json"[..], b"[1,2]", br#"{"exp":1}x"#] {
            let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
            let key = EncodingKey::from_secret(SECRET);
            let sig =
                jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
            let want = if payload == b"[1,2]" {
                Failure::Claims
            } else {
                Failure::Malformed
            };
            assert_eq!(
                run(&format!("{message}.{sig}"), &t),
                Err(want),
                "{payload:?}"
            );
        }
    }

    /// Signs `header` and `payload` as given, bytes for bytes.
    fn sign_raw(header: &[u8], payload: &[u8]) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let key = EncodingKey::from_secret(SECRET);
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{message}.{sig}")
    }

    #[test]
    fn critical_header_extensions_are_refused() {
        let t = table(|_| {});
        let payload = format!(r#"{{"exp":{}}}"#, NOW + 9);
        let plain = sign_raw(br#"{"alg":"HS256","typ":"JWT"}"#, payload.as_bytes());
        assert!(run(&plain, &t).is_ok());
        // RFC 7515 §4.1.11: an extension listed in `crit` must be understood;
        // this verifier understands none.
        for header in [
            &br#"{"alg":"HS256","crit":["b64"],"b64":false}"#[..],
            br#"{"alg":"HS256","crit":[]}"#,
            br#"{"alg":"HS256","alg":"none"}"#,
        ] {
            let token = sign_raw(header, payload.as_bytes());
            assert_eq!(run(&token, &t), Err(Failure::Malformed), "{header:?}");
        }
    }

    #[test]
    fn base64_must_be_canonical_and_unpadded() {
        let t = table(|_| {});
        let good = sign(&json!({"exp": NOW + 9}));
        assert!(run(&good, &t).is_ok());
        let (message, sig) = good.rsplit_once('.').unwrap();
        // A 32-byte signature leaves 2 spare bits in its last character:
        // another character with the same 4 leading bits decodes to the
        // same bytes unless trailing bits are refused.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let last = ALPHABET
            .iter()
            .position(|&c| c == *sig.as_bytes().last().unwrap())
            .unwrap();
        for spare in 1..4 {
            let other = char::from(ALPHABET[(last & !3) | ((last + spare) & 3)]);
            let twin = format!("{message}.{}{other}", &sig[..sig.len() - 1]);
            assert!(run(&twin, &t).is_err(), "{twin}");
        }
        let (header, payload) = message.split_once('.').unwrap();
        for padded in [
            format!("{header}=.{payload}.{sig}"),
            format!("{message}.{sig}="),
        ] {
            assert!(run(&padded, &t).is_err(), "{padded}");
        }
    }

    #[test]
    fn odd_numbers_and_header_spellings() {
        let t = table(|_| {});
        let payload = |claims: &str| sign_raw(br#"{"alg":"HS256"}"#, claims.as_bytes());
        let cases = [
            (r#"{"exp":-1}"#, Err(Failure::Expired)),
            (r#"{"exp":1e300}"#, Ok(Some(u64::MAX))),
            (r#"{"exp":18446744073709551616}"#, Ok(Some(u64::MAX))),
            (r#"{"exp":1e400}"#, Err(Failure::Malformed)),
            (
                r#"{"exp":1800000009,"nbf":-5,"iat":-1.5}"#,
                Ok(Some(NOW + 14)),
            ),
            (r#"{"exp":1800000009,"exp":1}"#, Err(Failure::Expired)),
            (r#"{"exp":null}"#, Err(Failure::Claims)),
            (
                r#"{"exp":1800000009,"channels":null}"#,
                Err(Failure::Claims),
            ),
        ];
        for (claims, want) in cases {
            assert_eq!(
                run(&payload(claims), &t).map(|s| s.expires),
                want,
                "{claims}"
            );
        }
        // The algorithm name is compared exactly, case included.
        let lower = sign_raw(br#"{"alg":"hs256"}"#, br#"{"exp":1800000009}"#);
        assert_eq!(run(&lower, &t), Err(Failure::Algorithm));
    }
}
