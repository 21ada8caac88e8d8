//! Channel grants: the names a token lets its bearer subscribe (or relay,
//! or publish) to.
//!
//! Owns: reading a grant claim (a list of strings, or one string) and
//! matching a channel against it: an exact name, or a prefix pattern
//! ending in `*` (`user.42.*` grants `user.42.inbox`; `*` grants every
//! channel).
//! Must never: allocate per match, or treat a `*` anywhere but at the end
//! as a wildcard.

use serde_json::Value;

/// What a pattern ending in this character grants: every name it prefixes.
const WILDCARD: char = '*';

/// The channel patterns of one claim.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Grants(Vec<String>);

impl Grants {
    /// The grants in a claim's value: a list of strings or one string;
    /// `None` for anything else.
    pub(crate) fn from_claim(value: &Value) -> Option<Grants> {
        match value {
            Value::String(s) => Some(Grants(vec![s.clone()])),
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .map(Grants),
            _ => None,
        }
    }

    /// Whether `channel` is granted.
    pub(crate) fn allows(&self, channel: &str) -> bool {
        self.0
            .iter()
            .any(|pattern| match pattern.strip_suffix(WILDCARD) {
                Some(prefix) => channel.starts_with(prefix),
                None => pattern == channel,
            })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn exact_names_and_prefix_patterns() {
        let g = Grants::from_claim(&json!(["news", "user.42.*"])).unwrap();
        let cases = [
            ("news", true),
            ("news2", false),
            ("new", false),
            ("user.42.inbox", true),
            ("user.42.", true),
            ("user.42", false),
            ("user.420", false),
            ("user.43.inbox", false),
        ];
        for (channel, allowed) in cases {
            assert_eq!(g.allows(channel), allowed, "{channel}");
        }
    }

    #[test]
    fn a_lone_star_grants_everything_and_an_inner_one_is_literal() {
        assert!(Grants::from_claim(&json!("*")).unwrap().allows("anything"));
        let inner = Grants::from_claim(&json!(["a*b"])).unwrap();
        assert!(!inner.allows("axb"));
        assert!(inner.allows("a*b"));
    }

    #[test]
    fn claims_of_other_types_are_refused() {
        assert_eq!(Grants::from_claim(&json!(42)), None);
        assert_eq!(Grants::from_claim(&json!(["a", 1])), None);
        assert_eq!(Grants::from_claim(&json!({"a": 1})), None);
        assert_eq!(Grants::from_claim(&json!([])), Some(Grants::default()));
    }
}
