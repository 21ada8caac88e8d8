//! Signed tokens from an independent implementation: Python's PyJWT, run as
//! a subprocess, with keys that Python's `cryptography` generates in a
//! temporary directory (`.ci/test` installs both when missing).
//!
//! One Python process makes every key of a [`Keys`], and one more mints a
//! whole batch of tokens, so a test pays Python's start-up twice, not per
//! token. Besides PyJWT's own tokens it makes the forgeries PyJWT refuses
//! to: `alg: none` and HS256 signed with an RSA public key's PEM bytes.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::tempdir::TempDir;

/// Makes the keys: secrets for HS256/384/512 (64 ASCII bytes), an RSA 2048
/// pair, two P-256 pairs (the second one also in a JWKS with the first, by
/// kid "ec1" and "ec2") and an Ed25519 pair, as PEM files.
const KEYGEN: &str = r#"
import json, os, sys
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm
d = sys.argv[1]
def write(name, data):
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
for name in ("hs", "hs_other"):
    write(name + ".secret", os.urandom(32).hex().encode() + b"\n")
keys = {"rsa": rsa.generate_private_key(65537, 2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ec2": ec.generate_private_key(ec.SECP256R1()),
        "ed": ed25519.Ed25519PrivateKey.generate()}
for name, key in keys.items():
    write(name + ".key.pem", key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
    write(name + ".pub.pem", key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
jwks = []
for kid, name in (("ec1", "ec"), ("ec2", "ec2")):
    jwk = ECAlgorithm.to_jwk(keys[name].public_key(), as_dict=True)
    jwk.update(kid=kid, alg="ES256", use="sig")
    jwks.append(jwk)
write("jwks.json", json.dumps({"keys": jwks}).encode())
"#;

/// Mints each spec of a JSON list read from stdin, printing a JSON list of
/// tokens: `{"alg", "key" (file), "claims", "headers", "forge"}`.
const MINT: &str = r#"
import base64, hashlib, hmac, json, os, sys
import jwt
d = sys.argv[1]
def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
def part(obj):
    return b64(json.dumps(obj, separators=(",", ":")).encode())
out = []
for spec in json.load(sys.stdin):
    claims, headers = spec["claims"], spec.get("headers") or {}
    forge = spec.get("forge")
    key = open(os.path.join(d, spec["key"]), "rb").read() if spec.get("key") else None
    if forge == "none":
        out.append(part({"alg": "none", "typ": "JWT"}) + "." + part(claims) + ".")
    elif forge == "hmac-with-public-key":
        signing = part({"alg": "HS256", "typ": "JWT"}) + "." + part(claims)
        mac = hmac.new(key, signing.encode(), hashlib.sha256).digest()
        out.append(signing + "." + b64(mac))
    else:
        if spec["key"].endswith(".secret"):
            key = key.rstrip(b"\n")
        out.append(jwt.encode(claims, key, algorithm=spec["alg"], headers=headers))
print(json.dumps(out))
"#;

/// The key files of one test, in a directory removed with it.
pub struct Keys {
    pub dir: TempDir,
}

/// One token to mint.
pub struct Spec {
    pub alg: &'static str,
    /// The key file (in [`Keys::dir`]) that signs it.
    pub key: &'static str,
    pub claims: Value,
    pub headers: Value,
    /// "none" or "hmac-with-public-key" for the forgeries; `None` for PyJWT.
    pub forge: Option<&'static str>,
}

impl Spec {
    pub fn new(alg: &'static str, key: &'static str, claims: Value) -> Spec {
        Spec {
            alg,
            key,
            claims,
            headers: json!({}),
            forge: None,
        }
    }
}

/// The private key file signing tokens of `alg` (`"hs.secret"` for HMAC).
pub fn signing_key(alg: &str) -> &'static str {
    match alg {
        a if a.starts_with("HS") => "hs.secret",
        a if a.starts_with("RS") || a.starts_with("PS") => "rsa.key.pem",
        "ES256" => "ec.key.pem",
        _ => "ed.key.pem",
    }
}

/// The public key file verifying tokens of `alg` (`"hs.secret"` for HMAC).
pub fn verifying_key(alg: &str) -> &'static str {
    match alg {
        a if a.starts_with("HS") => "hs.secret",
        a if a.starts_with("RS") || a.starts_with("PS") => "rsa.pub.pem",
        "ES256" => "ec.pub.pem",
        _ => "ed.pub.pem",
    }
}

/// Runs a Python script with `dir` as its argument and `input` on stdin.
fn python(script: &str, dir: &std::path::Path, input: &str) -> String {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed to run the token tests");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to python");
    let output = child.wait_with_output().expect("python3 ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named"),
        "the token tests need PyJWT and cryptography (pip install PyJWT cryptography): {stderr}"
    );
    assert!(output.status.success(), "python failed: {stderr}");
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

impl Keys {
    /// Generates every key in a fresh directory.
    pub fn new() -> Keys {
        let dir = TempDir::new("jwt");
        python(KEYGEN, dir.path(), "");
        Keys { dir }
    }

    /// The path of a key file.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Mints every spec, in order, in one Python run.
    pub fn mint(&self, specs: &[Spec]) -> Vec<String> {
        let input: Vec<Value> = specs
            .iter()
            .map(|s| {
                json!({"alg": s.alg, "key": s.key, "claims": s.claims,
                       "headers": s.headers, "forge": s.forge})
            })
            .collect();
        let out = python(MINT, self.dir.path(), &Value::Array(input).to_string());
        let tokens: Vec<String> = serde_json::from_str(out.trim()).expect("a JSON list of tokens");
        assert_eq!(tokens.len(), specs.len());
        tokens
    }

    /// Mints one token.
    pub fn mint_one(&self, spec: Spec) -> String {
        self.mint(&[spec]).remove(0)
    }
}

/// The wall clock in Unix seconds, for `exp`, `nbf` and `iat`.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}
