//! Channel grants: the names a token lets its bearer subscribe (or relay,
//! or publish) to.
//!
//! Owns: reading a grant claim (a list of strings, or one string) and
//! matching a channel against it: an exact name, or a prefix pattern
//! ending in `*` (`user.42.*` grants `user.42.inbox`; `*` grants every
//! channel); [`Text`], a claim string borrowed from the decoded token
//! unless JSON escapes forced a copy.
//! Must never: allocate per match or per name (the names borrow from the
//! decoded token; only the list is allocated), or treat a `*` anywhere but
//! at the end as a wildcard.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

/// What a pattern ending in this character grants: every name it prefixes.
const WILDCARD: char = '*';

/// A string claim, borrowed from the token's decoded JSON when it has no
/// escapes (serde's own `Cow<str>` always copies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Text<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

struct TextVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
    type Value = Text<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
        Ok(Text(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'a>, E> {
        Ok(Text(Cow::Owned(v.to_owned())))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text<'a>, D::Error> {
        d.deserialize_str(TextVisitor(PhantomData))
    }
}

/// The channel patterns of one claim.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Grants<'a>(Vec<Text<'a>>);

impl Grants<'_> {
    /// Whether `channel` is granted.
    pub(crate) fn allows(&self, channel: &str) -> bool {
        self.0
            .iter()
            .any(|pattern| match pattern.strip_suffix(WILDCARD) {
                Some(prefix) => channel.starts_with(prefix),
                None => **pattern == *channel,
            })
    }
}

struct GrantsVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for GrantsVisitor<'a> {
    type Value = Grants<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a channel name or a list of them")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Grants<'a>, E> {
        Ok(Grants(vec![Text(Cow::Borrowed(v))]))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Grants<'a>, E> {
        Ok(Grants(vec![Text(Cow::Owned(v.to_owned()))]))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Grants<'a>, A::Error> {
        let mut names = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(name) = seq.next_element::<Text<'a>>()? {
            names.push(name);
        }
        Ok(Grants(names))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Grants<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Grants<'a>, D::Error> {
        d.deserialize_any(GrantsVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(json: &str) -> Option<Grants<'_>> {
        serde_json::from_str(json).ok()
    }

    #[test]
    fn exact_names_and_prefix_patterns() {
        let g = grants(r#"["news", "user.42.*"]"#).unwrap();
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
        assert!(
            matches!(g.0[0].0, Cow::Borrowed(_)),
            "names borrow from the JSON"
        );
    }

    #[test]
    fn a_lone_star_grants_everything_and_an_inner_one_is_literal() {
        assert!(grants(r#""*""#).unwrap().allows("anything"));
        let inner = grants(r#"["a*b"]"#).unwrap();
        assert!(!inner.allows("axb"));
        assert!(inner.allows("a*b"));
        let escaped = grants(r#"["n\u0065ws"]"#).unwrap();
        assert!(escaped.allows("news"));
    }

    #[test]
    fn claims_of_other_types_are_refused() {
        assert_eq!(grants("42"), None);
        assert_eq!(grants(r#"["a", 1]"#), None);
        assert_eq!(grants(r#"{"a": 1}"#), None);
        assert_eq!(grants("[]"), Some(Grants::default()));
    }
}
