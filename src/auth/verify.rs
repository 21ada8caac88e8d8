//! Verifying a token against a key set and the rules of its table.
//!
//! Owns: the order of the checks (header, key, signature, then the claims
//! `exp`, `nbf`, `iat`, `aud`, `iss`, then the grant claims) and what a
//! verified token yields.
//! Must never: read the clock (`now` comes in), accept an algorithm other
//! than the key set's, or keep more of the token than the grants and the
//! expiry need.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Validation, decode, decode_header};
use serde_json::{Map, Value};

use super::{Failure, Grants};
use crate::config::AuthConfig;

/// What a verified token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Verified {
    /// When it stops being valid, leeway included (Unix seconds); `None`
    /// without `exp` (allowed only with `require_exp = false`).
    pub expires: Option<u64>,
    /// The `sub` claim, for the log.
    pub subject: Option<String>,
    /// The channels claim.
    pub channels: Grants,
    /// The relay claim, when the table names one.
    pub relay: Option<Grants>,
}

/// Verifies `token` with the keys and rules of `auth` at `now` (Unix
/// seconds).
pub(crate) fn verify(token: &str, auth: &AuthConfig, now: u64) -> Result<Verified, Failure> {
    let Some(algorithm) = auth.keys.algorithm() else {
        return Err(Failure::UnknownKey);
    };
    // An unknown `alg` (such as "none") fails here, as malformed.
    let header = decode_header(token).map_err(|_| Failure::Malformed)?;
    if header.alg != algorithm {
        return Err(Failure::Algorithm);
    }
    let key = auth
        .keys
        .select(header.kid.as_deref())
        .ok_or(Failure::UnknownKey)?;
    let mut validation = Validation::new(algorithm);
    // The time and audience checks are ours, against `now`.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let claims = decode::<Map<String, Value>>(token, key, &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => Failure::Signature,
            ErrorKind::InvalidAlgorithm => Failure::Algorithm,
            _ => Failure::Malformed,
        })?
        .claims;
    check_claims(&claims, auth, now)
}

/// A NumericDate claim (RFC 7519 §2): seconds, possibly fractional;
/// `Err` when present with another type.
fn date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, Failure> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Ok(Some(v)),
            // Negative or fractional: whole seconds, negatives as 0.
            (None, Some(f)) if f.is_finite() => Ok(Some(f.max(0.0) as u64)),
            _ => Err(Failure::Claims),
        },
        Some(_) => Err(Failure::Claims),
    }
}

fn check_claims(
    claims: &Map<String, Value>,
    auth: &AuthConfig,
    now: u64,
) -> Result<Verified, Failure> {
    let leeway = auth.leeway.as_secs();
    let expires = date(claims, "exp")?.map(|exp| exp.saturating_add(leeway));
    match expires {
        None if auth.require_exp => return Err(Failure::Claims),
        Some(deadline) if now >= deadline => return Err(Failure::Expired),
        _ => {}
    }
    for name in ["nbf", "iat"] {
        if date(claims, name)?.is_some_and(|t| t > now.saturating_add(leeway)) {
            return Err(Failure::NotYetValid);
        }
    }
    if let Some(audience) = &auth.audience {
        let matches = match claims.get("aud") {
            Some(Value::String(aud)) => aud == audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        if !matches {
            return Err(Failure::Audience);
        }
    }
    if let Some(issuer) = &auth.issuer
        && claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
    {
        return Err(Failure::Issuer);
    }
    let grants = |name: &str| match claims.get(name) {
        None => Ok(Grants::default()),
        Some(v) => Grants::from_claim(v).ok_or(Failure::Claims),
    };
    let subject = match claims.get("sub") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(Failure::Claims),
    };
    Ok(Verified {
        expires,
        subject,
        channels: grants(&auth.channels_claim)?,
        relay: auth.relay_claim.as_deref().map(grants).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    //! The claim checks on a fixed clock, with tokens signed by the crate's
    //! own encoder (the wire tests use PyJWT, an independent one).

    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

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

    fn check(claims: Value, t: &AuthConfig) -> Result<Verified, Failure> {
        verify(&sign(&claims), t, NOW)
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
        assert!(v.channels.allows("b.x") && !v.channels.allows("c"));
        assert!(v.relay.unwrap().allows("a"));
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
    }

    #[test]
    fn header_signature_and_shape_failures() {
        let t = table(|_| {});
        let good = sign(&json!({"exp": NOW + 9}));
        let (head_payload, sig) = good.rsplit_once('.').unwrap();
        let mut bad_sig = sig.to_owned();
        bad_sig.replace_range(..1, if sig.starts_with('A') { "B" } else { "A" });
        let forged = format!("{head_payload}.{bad_sig}");
        assert_eq!(verify(&forged, &t, NOW), Err(Failure::Signature));
        assert_eq!(
            verify(&good[..good.len() - 3], &t, NOW),
            Err(Failure::Signature)
        );
        for junk in ["", "a.b", "a.b.c", "...", "not a token"] {
            assert_eq!(verify(junk, &t, NOW), Err(Failure::Malformed), "{junk}");
        }
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &json!({"exp": NOW + 9}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(verify(&hs512, &t, NOW), Err(Failure::Algorithm));
        // {"alg":"none"} with an empty signature.
        let none = "eyJhbGciOiJub25lIn0.eyJleHAiOjk5OTk5OTk5OTl9.";
        assert_eq!(verify(none, &t, NOW), Err(Failure::Malformed));
    }
}
