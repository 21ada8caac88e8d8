//! Channel names and how an upgrade request names the channels it wants.
//!
//! Owns: what a channel name may be, and turning the rest of a broadcast
//! route's path plus the query string into a list of channel names.
//! Must never: allocate unboundedly on request input — the result holds at
//! most `max` names of at most [`MAX_CHANNEL_NAME_LEN`] bytes each, and
//! parsing stops as soon as the cap is exceeded.

/// Longest channel name accepted, in bytes.
pub(crate) const MAX_CHANNEL_NAME_LEN: usize = 128;

/// The query parameter that names a channel.
const CHANNEL_PARAM: &str = "channel";

/// Punctuation allowed in a channel name besides ASCII letters and digits.
/// None of it needs percent-encoding in a path or query, so a valid name is
/// always written the same way in both.
const NAME_PUNCTUATION: &[u8] = b"_.:@-";

/// 1–128 bytes of `[A-Za-z0-9_.:@-]`.
pub fn is_valid_channel_name(name: &str) -> bool {
    (1..=MAX_CHANNEL_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || NAME_PUNCTUATION.contains(&b))
}

/// Why an upgrade's channel request was refused; the message is meant for
/// the client (it goes into the HTTP error body).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    #[error("no channel given: use <prefix>/<channel> or ?channel=<name>")]
    NoChannel,
    #[error("invalid channel name: 1 to 128 characters of A-Z a-z 0-9 _ . : @ -")]
    BadName,
    #[error("too many channels: at most {0} per connection")]
    TooMany(usize),
}

/// The channels an upgrade on a broadcast route asks for.
///
/// `rest` is the request path after the route's prefix: `""` or `"/"` (no
/// channel in the path) or `"/<channel>"` (exactly one segment, taken as is:
/// valid names never need percent-encoding, so a `%` makes it `BadName`, as
/// do `"/a/b"` and a `rest` not starting with `/`).
///
/// `query` is the raw query string: every `channel=<name>` parameter adds a
/// channel, percent-decoded; other parameters are ignored so clients can add
/// cache-busters or tokens.
///
/// Duplicates are removed keeping first-seen order. More than `max` distinct
/// channels is `TooMany(max)`; none at all is `NoChannel`.
pub fn parse_subscription(
    rest: &str,
    query: Option<&str>,
    max: usize,
) -> Result<Vec<String>, SubscriptionError> {
    let mut channels = Vec::new();
    if let Some(name) = path_channel(rest)? {
        add_channel(&mut channels, name, max)?;
    }
    if let Some(query) = query {
        // Decoding allocates only for a parameter that is actually encoded,
        // bounded by that parameter's length and freed before the next one.
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if key == CHANNEL_PARAM {
                add_channel(&mut channels, &value, max)?;
            }
        }
    }
    if channels.is_empty() {
        return Err(SubscriptionError::NoChannel);
    }
    Ok(channels)
}

/// The channel named by the path remainder, if any.
fn path_channel(rest: &str) -> Result<Option<&str>, SubscriptionError> {
    match rest {
        "" | "/" => Ok(None),
        _ => match rest.strip_prefix('/') {
            // The segment is validated by `add_channel`; a further `/` fails there.
            Some(segment) => Ok(Some(segment)),
            None => Err(SubscriptionError::BadName),
        },
    }
}

/// Validates `name` and appends it unless already present.
///
/// Deduplication is a linear scan: the list never exceeds `max` (a small
/// per-connection cap), so this costs at most `max` short comparisons per
/// parameter, and the parameter count is bounded by the request head size.
fn add_channel(
    channels: &mut Vec<String>,
    name: &str,
    max: usize,
) -> Result<(), SubscriptionError> {
    if !is_valid_channel_name(name) {
        return Err(SubscriptionError::BadName);
    }
    if channels.iter().any(|c| c == name) {
        return Ok(());
    }
    if channels.len() >= max {
        return Err(SubscriptionError::TooMany(max));
    }
    channels.push(name.to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        let max_len = "a".repeat(MAX_CHANNEL_NAME_LEN);
        let too_long = "a".repeat(MAX_CHANNEL_NAME_LEN + 1);
        let cases: &[(&str, bool)] = &[
            ("", false),
            ("a", true),
            ("Az09", true),
            (&max_len, true),
            (&too_long, false),
            ("a_b", true),
            ("a.b", true),
            ("a:b", true),
            ("a@b", true),
            ("a-b", true),
            ("_.:@-", true),
            ("a b", false),
            ("a/b", false),
            ("a%40b", false),
            ("caf\u{e9}", false),
            ("a?b", false),
            ("a+b", false),
            ("a\0b", false),
            ("a\nb", false),
        ];
        for &(name, valid) in cases {
            assert_eq!(is_valid_channel_name(name), valid, "{name:?}");
        }
    }

    /// (rest, query, max, expected)
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        usize,
        Result<&'a [&'a str], SubscriptionError>,
    );

    #[test]
    fn subscriptions() {
        use SubscriptionError::*;
        let long_query = format!("channel={}", "a".repeat(MAX_CHANNEL_NAME_LEN + 1));
        let cases: &[Case] = &[
            // Path forms.
            ("", None, 4, Err(NoChannel)),
            ("/", None, 4, Err(NoChannel)),
            ("/a", None, 4, Ok(&["a"])),
            ("/a-b.c:d@e_f", None, 4, Ok(&["a-b.c:d@e_f"])),
            ("/a/b", None, 4, Err(BadName)),
            ("/a/", None, 4, Err(BadName)),
            ("//", None, 4, Err(BadName)),
            ("/a%40b", None, 4, Err(BadName)),
            ("/a b", None, 4, Err(BadName)),
            ("a", None, 4, Err(BadName)),
            // Query forms.
            ("", Some(""), 4, Err(NoChannel)),
            ("", Some("x=1"), 4, Err(NoChannel)),
            ("", Some("channel=a"), 4, Ok(&["a"])),
            ("", Some("channel=a&channel=b"), 4, Ok(&["a", "b"])),
            ("", Some("channel=a&x=1"), 4, Ok(&["a"])),
            ("", Some("t=123&channel=a&token=zz"), 4, Ok(&["a"])),
            ("", Some("channel=a%40b"), 4, Ok(&["a@b"])),
            ("", Some("channel="), 4, Err(BadName)),
            ("", Some("channel"), 4, Err(BadName)),
            ("", Some("channel=a+b"), 4, Err(BadName)),
            ("", Some("channel=a%20b"), 4, Err(BadName)),
            ("", Some("channel=a%2Fb"), 4, Err(BadName)),
            ("", Some("channel=%FF"), 4, Err(BadName)),
            ("", Some(&long_query), 4, Err(BadName)),
            (
                "",
                Some("channel=b&channel=a&channel=b"),
                4,
                Ok(&["b", "a"]),
            ),
            ("", Some("channel=a&channel=a&channel=a"), 1, Ok(&["a"])),
            // The cap: exactly max passes, max + 1 fails.
            ("", Some("channel=a&channel=b"), 2, Ok(&["a", "b"])),
            (
                "",
                Some("channel=a&channel=b&channel=c"),
                2,
                Err(TooMany(2)),
            ),
            ("/a", Some("channel=b&channel=c"), 2, Err(TooMany(2))),
            ("/a", None, 0, Err(TooMany(0))),
            // Parsing stops at the cap: a bad name after it is never seen.
            (
                "",
                Some("channel=a&channel=b&channel=%"),
                1,
                Err(TooMany(1)),
            ),
            // Path and query together.
            ("/a", Some("channel=b"), 4, Ok(&["a", "b"])),
            ("/a", Some("channel=a&channel=b"), 4, Ok(&["a", "b"])),
            ("/a", Some("x=1"), 4, Ok(&["a"])),
            ("/", Some("channel=b"), 4, Ok(&["b"])),
            ("/a/b", Some("channel=c"), 4, Err(BadName)),
            ("/a", Some("channel="), 4, Err(BadName)),
        ];
        for &(rest, query, max, expected) in cases {
            let got = parse_subscription(rest, query, max);
            let expected = expected.map(|names| names.iter().map(|s| s.to_string()).collect());
            assert_eq!(got, expected, "rest={rest:?} query={query:?} max={max}");
        }
    }

    #[test]
    fn error_messages_name_the_cap() {
        assert_eq!(
            SubscriptionError::TooMany(8).to_string(),
            "too many channels: at most 8 per connection"
        );
    }
}
