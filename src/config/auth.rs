//! `[auth.<name>]`: named key sets that verify signed tokens (JWT), which
//! routes (`auth = "<name>"`) and the publish API (`publish_auth`) use.
//!
//! Owns: [`AuthConfig`] and its defaults, turning a table as written into
//! one (exactly one key source, fitting the algorithm), the rules tying the
//! tables to routes and origins, and reading their key files into each
//! table's [`KeySet`] once the config is valid.
//! Must never: show a secret or a key (errors name the file only), or
//! verify tokens (that is `crate::auth`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Config, ConfigError, values};
use crate::auth::keys::{Algorithm, KeySet, KeySource};
use crate::protocol::http::is_token;

/// Tokens issued slightly in the future or just expired still pass by this
/// much (clock skew between the issuer and this host).
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);
/// The claim listing the channels a token grants.
pub const DEFAULT_CHANNELS_CLAIM: &str = "channels";
/// The claim listing the channels a token lets its bearer publish to
/// (`publish_auth`). Deliberately not the subscribe claim: a subscriber's
/// token, which a browser holds, must not let it publish.
pub const DEFAULT_PUBLISH_CLAIM: &str = "publish";

/// Channels per connection whose relay grant a connection can hold (one
/// bit each).
pub(crate) const RELAY_CHANNELS: usize = 32;

/// One key set and the rules its tokens must pass. `Debug` shows no key.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "AuthTable")]
pub struct AuthConfig {
    /// The one algorithm accepted: a token's header must name it.
    pub algorithm: Algorithm,
    /// Where the keys come from.
    pub source: KeySource,
    /// When set, the `aud` claim must be (or list) this; unset, a token
    /// with `aud` is refused (it was meant for another service).
    pub audience: Option<String>,
    /// When set, the `iss` claim must be this.
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    /// The claim listing the channels the bearer may subscribe to: names
    /// and `prefix*` patterns.
    pub channels_claim: String,
    /// With `publish_auth`, the claim listing the channels the bearer may
    /// publish to (same patterns); never the subscribe claim.
    pub publish_claim: String,
    /// On chat routes (`client_messages = "broadcast"`), the claim listing
    /// the channels the bearer's messages may be relayed to; unset relays
    /// to all of the bearer's channels.
    pub relay_claim: Option<String>,
    /// Also look for the token in this cookie (after the Authorization
    /// header, before the `token` query parameter).
    pub cookie: Option<String>,
    /// The keys, read from `source` by [`Config::load_keys`]; empty before.
    pub keys: KeySet,
}

/// A `[auth.<name>]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthTable {
    algorithm: Algorithm,
    secret_file: Option<PathBuf>,
    public_key_file: Option<PathBuf>,
    jwks_file: Option<PathBuf>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway: Option<Leeway>,
    require_exp: Option<bool>,
    channels_claim: Option<String>,
    publish_claim: Option<String>,
    relay_claim: Option<String>,
    cookie: Option<String>,
}

#[derive(Deserialize)]
#[serde(transparent)]
struct Leeway(#[serde(deserialize_with = "values::duration")] Duration);

impl TryFrom<AuthTable> for AuthConfig {
    type Error = ConfigError;

    fn try_from(t: AuthTable) -> Result<AuthConfig, ConfigError> {
        let hmac = matches!(
            t.algorithm,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        );
        let source = match (t.secret_file, t.public_key_file, t.jwks_file) {
            (Some(p), None, None) if hmac => KeySource::Secret(p),
            (None, Some(p), None) if !hmac => KeySource::PublicKey(p),
            (None, None, Some(p)) => KeySource::Jwks(p),
            (Some(_), None, None) | (None, Some(_), None) => {
                let (key, wanted) = if hmac {
                    ("auth.public_key_file", "secret_file")
                } else {
                    ("auth.secret_file", "public_key_file")
                };
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "does not fit algorithm {:?}: use {wanted} or jwks_file (the algorithm is pinned by the key, so an HMAC secret and a public key never stand in for each other)",
                        t.algorithm
                    ),
                ));
            }
            _ => {
                return Err(ConfigError::invalid(
                    "auth",
                    "a key set needs exactly one of secret_file, public_key_file and jwks_file",
                ));
            }
        };
        Ok(AuthConfig {
            algorithm: t.algorithm,
            source,
            audience: t.audience,
            issuer: t.issuer,
            leeway: t.leeway.map_or(DEFAULT_LEEWAY, |l| l.0),
            require_exp: t.require_exp.unwrap_or(true),
            channels_claim: t
                .channels_claim
                .unwrap_or_else(|| DEFAULT_CHANNELS_CLAIM.to_owned()),
            publish_claim: t
                .publish_claim
                .unwrap_or_else(|| DEFAULT_PUBLISH_CLAIM.to_owned()),
            relay_claim: t.relay_claim,
            cookie: t.cookie,
            keys: KeySet::default(),
        })
    }
}

/// The rules of the `[auth.*]` tables and of the settings naming them.
pub(super) fn check_auth(config: &Config) -> Result<(), ConfigError> {
    for (name, auth) in &config.auth {
        let bad_name = name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if bad_name {
            return Err(ConfigError::invalid(
                "auth",
                format!("key set name {name:?} must be 1 or more of A-Z a-z 0-9 _ -"),
            ));
        }
        for (key, claim) in [
            ("auth.channels_claim", Some(&auth.channels_claim)),
            ("auth.publish_claim", Some(&auth.publish_claim)),
            ("auth.relay_claim", auth.relay_claim.as_ref()),
        ] {
            if claim.is_some_and(String::is_empty) {
                return Err(ConfigError::invalid(
                    key,
                    format!("must not be empty ([auth.{name}])"),
                ));
            }
        }
        if auth.publish_claim == auth.channels_claim {
            return Err(ConfigError::invalid(
                "auth.publish_claim",
                format!(
                    "must differ from channels_claim ([auth.{name}]): otherwise every subscriber's token would also let its bearer publish"
                ),
            ));
        }
        if auth.relay_claim.is_some() && config.max_channels_per_connection > RELAY_CHANNELS {
            return Err(ConfigError::invalid(
                "auth.relay_claim",
                format!(
                    "[auth.{name}] has a relay claim, which a connection tracks for at most {RELAY_CHANNELS} channels; max_channels_per_connection is {}",
                    config.max_channels_per_connection
                ),
            ));
        }
        if let Some(cookie) = &auth.cookie {
            if !is_token(cookie.as_bytes()) {
                return Err(ConfigError::invalid(
                    "auth.cookie",
                    format!("{cookie:?} is not a cookie name ([auth.{name}])"),
                ));
            }
            // A browser sends cookies with any page's connection attempt;
            // only the Origin check stops another site from using them.
            if config.allowed_origins.is_empty() {
                return Err(ConfigError::invalid(
                    "auth.cookie",
                    format!(
                        "[auth.{name}] reads the token from a cookie, which needs a non-empty allowed_origins: a browser sends cookies along with any site's WebSocket connection, so without an Origin allow-list any page could connect as the user (cross-site WebSocket hijacking)"
                    ),
                ));
            }
        }
    }
    let named = |key: &str, name: &str| {
        if config.auth.contains_key(name) {
            Ok(())
        } else {
            Err(ConfigError::invalid(
                key,
                format!("names key set {name:?}, but there is no [auth.{name}] table"),
            ))
        }
    };
    for route in &config.routes {
        if let Some(name) = &route.auth {
            named("route.auth", name)?;
        }
    }
    if let Some(name) = &config.publish_auth {
        named("publish_auth", name)?;
    }
    Ok(())
}

impl Config {
    /// Reads the key files of every `[auth.*]` table (at start, by
    /// `--check-config` and on reload: a reload whose key file cannot be
    /// used fails as a whole, so the running keys stay).
    pub(super) fn load_keys(&mut self) -> Result<(), ConfigError> {
        for (name, auth) in &mut self.auth {
            let key = match auth.source {
                KeySource::Secret(_) => "secret_file",
                KeySource::PublicKey(_) => "public_key_file",
                KeySource::Jwks(_) => "jwks_file",
            };
            auth.keys = KeySet::load(auth.algorithm, &auth.source)
                .map_err(|e| ConfigError::invalid(&format!("auth.{name}.{key}"), e.to_string()))?;
        }
        Ok(())
    }
}

/// The tables' names and what changed in each, for the reload log.
pub(super) fn changes(
    old: &BTreeMap<String, AuthConfig>,
    new: &BTreeMap<String, AuthConfig>,
) -> Vec<String> {
    let mut changes = Vec::new();
    for (name, a) in old {
        let Some(b) = new.get(name) else {
            changes.push(format!("auth.{name}: removed"));
            continue;
        };
        if a.keys != b.keys {
            changes.push(format!("auth.{name}: keys changed"));
        }
        let settings = AuthConfig {
            keys: KeySet::default(),
            ..a.clone()
        };
        if settings
            != (AuthConfig {
                keys: KeySet::default(),
                ..b.clone()
            })
        {
            changes.push(format!("auth.{name}: settings changed"));
        }
    }
    for name in new.keys().filter(|n| !old.contains_key(*n)) {
        changes.push(format!("auth.{name}: added"));
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::super::tests::{invalid_key, parse_err};
    use super::*;

    fn secret_file(name: &str, content: &[u8]) -> String {
        let dir = std::env::temp_dir().join(format!("wshub-auth-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    }

    fn with_table(table: &str) -> String {
        format!(
            "[[route]]\npath = \"/live\"\nkind = \"broadcast\"\nauth = \"app\"\n\n[auth.app]\n{table}\n"
        )
    }

    #[test]
    fn a_table_loads_its_keys_with_defaults() {
        let path = secret_file("good", &[b'x'; 32]);
        let text = with_table(&format!("algorithm = \"HS256\"\nsecret_file = {path:?}"));
        let c = Config::from_toml_str(&text).unwrap();
        let app = &c.auth["app"];
        assert_eq!(app.keys.len(), 1);
        assert_eq!(app.leeway, DEFAULT_LEEWAY);
        assert!(app.require_exp);
        assert_eq!(app.channels_claim, DEFAULT_CHANNELS_CLAIM);
        assert_eq!(app.publish_claim, DEFAULT_PUBLISH_CLAIM);
        assert_eq!(c.routes[0].auth.as_deref(), Some("app"));
    }

    #[test]
    fn a_key_file_that_cannot_be_used_names_the_table_and_file() {
        let short = secret_file("short", b"too short");
        let text = with_table(&format!("algorithm = \"HS256\"\nsecret_file = {short:?}"));
        assert_eq!(invalid_key(&text), "auth.app.secret_file");
        let text = with_table("algorithm = \"ES256\"\npublic_key_file = \"/nonexistent.pem\"");
        assert_eq!(invalid_key(&text), "auth.app.public_key_file");
    }

    #[test]
    fn key_sources_must_fit_the_algorithm_and_be_one() {
        let cases = [
            (
                "algorithm = \"RS256\"\nsecret_file = \"s\"",
                "auth.secret_file",
            ),
            (
                "algorithm = \"HS256\"\npublic_key_file = \"k\"",
                "auth.public_key_file",
            ),
            ("algorithm = \"HS256\"", "auth"),
            (
                "algorithm = \"HS256\"\nsecret_file = \"s\"\njwks_file = \"j\"",
                "auth",
            ),
        ];
        for (table, key) in cases {
            let msg = parse_err(&with_table(table));
            assert!(msg.contains(key), "{table}: {msg}");
        }
        assert!(
            parse_err(&with_table("algorithm = \"none\"\nsecret_file = \"s\"")).contains("none")
        );
        assert!(
            parse_err(&with_table(
                "algorithm = \"HS256\"\nsecret_file = \"s\"\nkid = \"x\""
            ))
            .contains("kid")
        );
    }

    #[test]
    fn names_must_exist_and_a_cookie_needs_an_origin_list() {
        let path = secret_file("names", &[b'x'; 32]);
        let table = format!("algorithm = \"HS256\"\nsecret_file = {path:?}");
        let unknown = with_table(&table).replace("auth = \"app\"", "auth = \"other\"");
        assert_eq!(invalid_key(&unknown), "route.auth");
        let publish = format!("publish_auth = \"nope\"\n{}", with_table(&table));
        assert_eq!(invalid_key(&publish), "publish_auth");
        let same = with_table(&format!(
            "{table}\nchannels_claim = \"grants\"\npublish_claim = \"grants\""
        ));
        assert_eq!(invalid_key(&same), "auth.publish_claim");
        let cookie = with_table(&format!("{table}\ncookie = \"t\""));
        let msg = Config::from_toml_str(&cookie).unwrap_err().to_string();
        assert!(
            msg.contains("auth.cookie") && msg.contains("hijacking"),
            "{msg}"
        );
        let allowed = format!("allowed_origins = [\"https://app.example\"]\n{cookie}");
        assert!(Config::from_toml_str(&allowed).is_ok());
        let relay = format!(
            "max_channels_per_connection = 33\n{}",
            with_table(&format!("{table}\nrelay_claim = \"r\""))
        );
        assert_eq!(invalid_key(&relay), "auth.relay_claim");
    }

    #[test]
    fn reload_reports_tables_without_their_keys() {
        let a = secret_file("reload-a", &[b'a'; 32]);
        let b = secret_file("reload-b", &[b'b'; 32]);
        let load = |path: &str, extra: &str| {
            Config::from_toml_str(&with_table(&format!(
                "algorithm = \"HS256\"\nsecret_file = {path:?}\n{extra}"
            )))
            .unwrap()
        };
        let old = load(&a, "");
        assert!(old.changed_settings(&load(&a, "")).is_empty());
        assert_eq!(
            old.changed_settings(&load(&b, "")),
            ["auth.app: keys changed", "auth.app: settings changed"],
            "another file"
        );
        assert_eq!(
            old.changed_settings(&load(&a, "leeway = \"1s\"")),
            ["auth.app: settings changed"]
        );
        std::fs::write(&a, [b'c'; 32]).unwrap();
        assert_eq!(
            old.changed_settings(&load(&a, "")),
            ["auth.app: keys changed"]
        );
        let none = Config::default();
        assert_eq!(none.changed_settings(&old), ["auth.app: added"]);
        assert_eq!(old.changed_settings(&none), ["auth.app: removed"]);
    }
}
