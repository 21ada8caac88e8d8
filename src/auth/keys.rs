//! The keys one `[auth.<name>]` table verifies tokens with: read from files
//! once (at start, by `--check-config`, on reload) into an immutable set.
//!
//! Owns: reading a shared secret, a PEM public key or a JWKS file into
//! `jsonwebtoken` decoding keys of the one configured algorithm, choosing
//! a key for a token by its `kid`, and a fingerprint that tells a reload
//! whether the keys changed.
//! Must never: show key material in `Debug` output or an error, accept an
//! HMAC secret shorter than its hash, or let a key serve an algorithm
//! other than the configured one (a JWKS entry of another algorithm,
//! family or curve is left out).

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};

/// Where a key set's keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// A shared secret (HS256/384/512): the file's bytes, a final line end
    /// removed.
    Secret(PathBuf),
    /// One PEM public key (`PUBLIC KEY`, or `RSA PUBLIC KEY` for RSA).
    PublicKey(PathBuf),
    /// A JSON Web Key Set (`{"keys": [...]}`); `kid` picks among its keys.
    Jwks(PathBuf),
}

/// Why a key file cannot be used; names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl KeyError {
    fn invalid(path: &Path, message: impl Into<String>) -> KeyError {
        KeyError::Invalid {
            path: path.display().to_string(),
            message: message.into(),
        }
    }
}

struct Key {
    kid: Option<String>,
    key: DecodingKey,
}

struct Inner {
    algorithm: Algorithm,
    keys: Vec<Key>,
    fingerprint: u64,
}

/// The loaded keys of one key set; cheap to clone (shared), equal when
/// loaded from the same bytes for the same algorithm. The default is the
/// empty set a config holds before its files are read.
#[derive(Clone, Default)]
pub struct KeySet(Option<Arc<Inner>>);

impl KeySet {
    /// Reads the keys of `source` for `algorithm`.
    pub(crate) fn load(algorithm: Algorithm, source: &KeySource) -> Result<KeySet, KeyError> {
        let path = match source {
            KeySource::Secret(p) | KeySource::PublicKey(p) | KeySource::Jwks(p) => p,
        };
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let keys = match source {
            KeySource::Secret(_) => vec![secret_key(algorithm, &bytes, path)?],
            KeySource::PublicKey(_) => vec![pem_key(algorithm, &bytes, path)?],
            KeySource::Jwks(_) => jwks_keys(algorithm, &bytes, path)?,
        };
        let mut hasher = DefaultHasher::new();
        (format!("{algorithm:?}"), &bytes).hash(&mut hasher);
        Ok(KeySet(Some(Arc::new(Inner {
            algorithm,
            keys,
            fingerprint: hasher.finish(),
        }))))
    }

    /// A set of one shared secret held in memory (tests and fuzzing).
    pub(crate) fn from_secret(algorithm: Algorithm, secret: &[u8]) -> Result<KeySet, KeyError> {
        let key = secret_key(algorithm, secret, Path::new("(memory)"))?;
        Ok(KeySet(Some(Arc::new(Inner {
            algorithm,
            keys: vec![key],
            fingerprint: 0,
        }))))
    }

    /// The one algorithm every token verified with this set must name.
    pub fn algorithm(&self) -> Option<Algorithm> {
        self.0.as_ref().map(|i| i.algorithm)
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |i| i.keys.len())
    }

    /// Whether no key is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key for a token whose header names `kid`: the key with that
    /// `kid`; a token without one is verified with the set's only key
    /// (with several keys, `kid` is required, so a bad token costs one
    /// verification, never one per key). A lone key that has no `kid` (a
    /// secret, a PEM key, a JWKS entry without one) serves any token: its
    /// `kid` names nothing to compare with.
    pub(crate) fn select(&self, kid: Option<&str>) -> Option<&DecodingKey> {
        let keys = &self.0.as_ref()?.keys;
        match (kid, keys.as_slice()) {
            (_, [only]) if only.kid.is_none() => Some(only),
            (None, [only]) => Some(only),
            (Some(kid), _) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            (None, _) => None,
        }
        .map(|k| &k.key)
    }
}

impl PartialEq for KeySet {
    fn eq(&self, other: &KeySet) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => a.fingerprint == b.fingerprint && a.algorithm == b.algorithm,
            (None, None) => true,
            _ => false,
        }
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(i) => write!(f, "KeySet({:?}, {} keys)", i.algorithm, i.keys.len()),
            None => f.write_str("KeySet(not loaded)"),
        }
    }
}

fn is_hmac(algorithm: Algorithm) -> bool {
    matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    )
}

/// The shortest secret for an HMAC algorithm: its hash's output size
/// (RFC 7518 §3.2).
fn min_secret_len(algorithm: Algorithm) -> usize {
    match algorithm {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

fn secret_key(algorithm: Algorithm, bytes: &[u8], path: &Path) -> Result<Key, KeyError> {
    if !is_hmac(algorithm) {
        return Err(KeyError::invalid(
            path,
            format!("a shared secret only serves HS256, HS384 or HS512, not {algorithm:?}"),
        ));
    }
    let secret = bytes
        .strip_suffix(b"\n")
        .map(|s| s.strip_suffix(b"\r").unwrap_or(s))
        .unwrap_or(bytes);
    let min = min_secret_len(algorithm);
    if secret.len() < min {
        return Err(KeyError::invalid(
            path,
            format!(
                "the secret has {} bytes; {algorithm:?} needs at least {min}",
                secret.len()
            ),
        ));
    }
    Ok(Key {
        kid: None,
        key: DecodingKey::from_secret(secret),
    })
}

fn pem_key(algorithm: Algorithm, bytes: &[u8], path: &Path) -> Result<Key, KeyError> {
    let key = match algorithm {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => DecodingKey::from_rsa_pem(bytes),
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(bytes),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(bytes),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            return Err(KeyError::invalid(
                path,
                format!("{algorithm:?} takes a shared secret (secret_file), not a public key"),
            ));
        }
    };
    key.map(|key| Key { kid: None, key }).map_err(|e| {
        KeyError::invalid(
            path,
            format!("not a PEM public key for {algorithm:?} ({e})"),
        )
    })
}

fn jwks_keys(algorithm: Algorithm, bytes: &[u8], path: &Path) -> Result<Vec<Key>, KeyError> {
    let set: JwkSet = serde_json::from_slice(bytes)
        .map_err(|e| KeyError::invalid(path, format!("not a JWKS document ({e})")))?;
    let name = format!("{algorithm:?}");
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let common = &jwk.common;
        if matches!(common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        if common.key_algorithm.is_some_and(|a| a.to_string() != name) {
            continue;
        }
        let fits = match (&jwk.algorithm, algorithm) {
            (AlgorithmParameters::OctetKey(_), a) => is_hmac(a),
            (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => {
                p.curve == EllipticCurve::P256
            }
            (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384) => {
                p.curve == EllipticCurve::P384
            }
            (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
                p.curve == EllipticCurve::Ed25519
            }
            (AlgorithmParameters::RSA(_), a) => matches!(
                a,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            _ => false,
        };
        if !fits {
            continue;
        }
        if let AlgorithmParameters::OctetKey(oct) = &jwk.algorithm {
            // The same floor as a secret file: an `oct` key is a secret.
            let len = URL_SAFE_NO_PAD.decode(&oct.value).map_or(0, |k| k.len());
            let min = min_secret_len(algorithm);
            if len < min {
                return Err(KeyError::invalid(
                    path,
                    format!(
                        "key {:?} has {len} bytes; {algorithm:?} needs at least {min}",
                        common.key_id.as_deref().unwrap_or("")
                    ),
                ));
            }
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| {
            KeyError::invalid(
                path,
                format!(
                    "key {:?} cannot be used ({e})",
                    common.key_id.as_deref().unwrap_or("")
                ),
            )
        })?;
        keys.push(Key {
            kid: common.key_id.clone(),
            key,
        });
    }
    if keys.is_empty() {
        return Err(KeyError::invalid(
            path,
            format!("holds no signing key for {algorithm:?}"),
        ));
    }
    if keys.len() > 1 && keys.iter().any(|k| k.kid.is_none()) {
        return Err(KeyError::invalid(
            path,
            "with several keys, every key needs a kid (tokens name their key with it)",
        ));
    }
    for (i, key) in keys.iter().enumerate() {
        if let Some(kid) = &key.kid
            && keys[..i].iter().any(|k| k.kid.as_ref() == Some(kid))
        {
            return Err(KeyError::invalid(
                path,
                format!("kid {kid:?} names two keys for {algorithm:?}"),
            ));
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, content: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wshub-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn secrets_lose_one_line_end_and_must_be_long_enough() {
        let path = temp("s32", b"0123456789abcdef0123456789abcdef\r\n");
        let set = KeySet::load(Algorithm::HS256, &KeySource::Secret(path.clone())).unwrap();
        assert_eq!(set.len(), 1);
        assert!(!format!("{set:?}").contains("0123"));
        let err = KeySet::load(Algorithm::HS384, &KeySource::Secret(path.clone())).unwrap_err();
        assert!(err.to_string().contains("needs at least 48"), "{err}");
        let err = KeySet::load(Algorithm::RS256, &KeySource::Secret(path)).unwrap_err();
        assert!(err.to_string().contains("only serves HS"), "{err}");
    }

    #[test]
    fn same_bytes_same_set_and_changed_bytes_differ() {
        let a = temp("a", &[b'a'; 40]);
        let b = temp("b", &[b'b'; 40]);
        let load =
            |p: &PathBuf| KeySet::load(Algorithm::HS256, &KeySource::Secret(p.clone())).unwrap();
        assert_eq!(load(&a), load(&a));
        assert_ne!(load(&a), load(&b));
        assert_ne!(load(&a), KeySet::default());
    }

    #[test]
    fn jwks_keys_of_other_algorithms_are_left_out_and_kid_selects() {
        let doc = br#"{"keys":[
            {"kty":"oct","kid":"one","alg":"HS256","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"},
            {"kty":"oct","kid":"two","k":"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODlhYg"},
            {"kty":"oct","kid":"other","alg":"HS512","k":"QUJD"}
        ]}"#;
        let set = KeySet::load(Algorithm::HS256, &KeySource::Jwks(temp("jwks", doc))).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.select(Some("one")).is_some());
        assert!(set.select(Some("two")).is_some());
        assert!(set.select(Some("other")).is_none());
        assert!(set.select(None).is_none(), "several keys: kid required");
        let err = KeySet::load(Algorithm::ES256, &KeySource::Jwks(temp("jwks2", doc))).unwrap_err();
        assert!(
            err.to_string().contains("no signing key for ES256"),
            "{err}"
        );
    }

    #[test]
    fn a_single_key_without_kid_serves_tokens_that_name_one() {
        // A secret or PEM key has no kid; backends often add one anyway.
        let set = KeySet::from_secret(Algorithm::HS256, &[b'k'; 32]).unwrap();
        assert!(set.select(None).is_some());
        assert!(set.select(Some("2026-01")).is_some());
        // A JWKS key that has a kid must be named by it.
        let doc = br#"{"keys":[{"kty":"oct","kid":"one","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}"#;
        let set = KeySet::load(Algorithm::HS256, &KeySource::Jwks(temp("jwks1", doc))).unwrap();
        assert!(set.select(Some("one")).is_some());
        assert!(set.select(None).is_some());
        assert!(set.select(Some("two")).is_none());
    }

    #[test]
    fn a_jwks_hmac_key_must_be_as_long_as_its_hash() {
        // "QUJD" is 3 bytes: as weak as a 3-byte secret file, which is refused.
        let doc = br#"{"keys":[{"kty":"oct","kid":"weak","k":"QUJD"}]}"#;
        let err = KeySet::load(Algorithm::HS256, &KeySource::Jwks(temp("jwks4", doc))).unwrap_err();
        assert!(err.to_string().contains("needs at least 32"), "{err}");
    }

    #[test]
    fn jwks_kids_must_be_unique() {
        let doc = br#"{"keys":[
            {"kty":"oct","kid":"one","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"},
            {"kty":"oct","kid":"one","k":"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODlhYg"}
        ]}"#;
        let err = KeySet::load(Algorithm::HS256, &KeySource::Jwks(temp("jwks3", doc))).unwrap_err();
        assert!(err.to_string().contains("kid \"one\""), "{err}");
    }

    #[test]
    fn unreadable_and_garbage_files_name_the_path() {
        let missing = KeySource::PublicKey(PathBuf::from("/nonexistent/key.pem"));
        let err = KeySet::load(Algorithm::ES256, &missing).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/key.pem"), "{err}");
        let garbage = KeySource::PublicKey(temp("garbage.pem", b"not a key"));
        let err = KeySet::load(Algorithm::ES256, &garbage).unwrap_err();
        assert!(err.to_string().contains("not a PEM public key"), "{err}");
    }
}
