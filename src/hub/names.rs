//! Channel names and how an upgrade request names the channels it wants.
//!
//! Owns: what a channel name may be, turning the rest of a broadcast
//! route's path plus the query string into a list of channel names, and
//! the options an upgrade adds to them (`meta=`, `recover=`).
//! Must never: allocate unboundedly on request input — the result holds at
//! most `max` names of at most [`MAX_CHANNEL_NAME_LEN`] bytes each, at most
//! one recovery position per name, and parsing stops at the first error or
//! as soon as the cap is exceeded.

use super::position::{Epoch, Position};

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

/// The query parameter that asks for messages with metadata.
const META_PARAM: &str = "meta";
/// The query parameter that asks to recover a channel from a position.
const RECOVER_PARAM: &str = "recover";

/// One channel an upgrade subscribes to, and the position of the last
/// message its client saw there, if it asks to recover what came after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub name: String,
    pub from: Option<Position>,
}

/// Why an upgrade's options were refused (the message goes into the 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OptionError {
    #[error("meta must be 0 or 1")]
    BadMeta,
    #[error(
        "malformed recover: use recover=<channel>:<epoch>:<offset>, the epoch 16 lowercase hex digits and the offset a decimal number"
    )]
    BadRecover,
    #[error("recover names a channel this request does not subscribe to")]
    NotSubscribed,
    #[error("recover names a channel twice")]
    Twice,
}

/// The channels to subscribe to with their recovery positions, and whether
/// the client wants metadata (`meta=1`; any `recover=` implies it: a
/// recovering client must be able to tell the replay from live messages and
/// keep its position).
///
/// Each `recover=<channel>:<epoch>:<offset>` (percent-decoded) is split
/// from the right, since channel names may contain `:` and epochs and
/// offsets cannot.
pub(crate) fn parse_options(
    channels: Vec<String>,
    query: Option<&str>,
) -> Result<(bool, Vec<Wanted>), OptionError> {
    let mut wanted: Vec<Wanted> = channels
        .into_iter()
        .map(|name| Wanted { name, from: None })
        .collect();
    let mut meta = false;
    for (key, value) in query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
    {
        if key == META_PARAM {
            meta = match &*value {
                "1" => true,
                "0" => false,
                _ => return Err(OptionError::BadMeta),
            };
        } else if key == RECOVER_PARAM {
            let (name, position) = parse_recover(&value).ok_or(OptionError::BadRecover)?;
            let entry = wanted
                .iter_mut()
                .find(|w| w.name == name)
                .ok_or(OptionError::NotSubscribed)?;
            if entry.from.is_some() {
                return Err(OptionError::Twice);
            }
            entry.from = Some(position);
        }
    }
    let recovering = wanted.iter().any(|w| w.from.is_some());
    Ok((meta || recovering, wanted))
}

/// `<channel>:<epoch>:<offset>`, split from the right.
fn parse_recover(value: &str) -> Option<(&str, Position)> {
    let (rest, offset) = value.rsplit_once(':')?;
    let (name, epoch) = rest.rsplit_once(':')?;
    let digits = !offset.is_empty() && offset.bytes().all(|b| b.is_ascii_digit());
    let offset = digits.then(|| offset.parse::<u64>().ok()).flatten()?;
    Some((
        name,
        Position {
            epoch: Epoch::parse(epoch)?,
            offset,
        },
    ))
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
    fn options() {
        use OptionError::*;
        let e = "00000000000000ab";
        let at = |offset| {
            Some(Position {
                epoch: Epoch::parse(e).unwrap(),
                offset,
            })
        };
        let chans = || vec!["a".to_string(), "b:c".to_string()];
        let run = |q: &str| {
            parse_options(chans(), Some(q))
                .map(|(meta, w)| (meta, w.into_iter().map(|w| w.from).collect::<Vec<_>>()))
        };
        assert_eq!(
            parse_options(chans(), None),
            Ok((
                false,
                vec![
                    Wanted {
                        name: "a".into(),
                        from: None
                    },
                    Wanted {
                        name: "b:c".into(),
                        from: None
                    },
                ]
            ))
        );
        type Case = (String, Result<(bool, Vec<Option<Position>>), OptionError>);
        let cases: &[Case] = &[
            ("x=1".into(), Ok((false, vec![None, None]))),
            ("meta=1".into(), Ok((true, vec![None, None]))),
            ("meta=0".into(), Ok((false, vec![None, None]))),
            ("meta=yes".into(), Err(BadMeta)),
            (format!("recover=a:{e}:7"), Ok((true, vec![at(7), None]))),
            (
                format!("meta=0&recover=b:c:{e}:0"),
                Ok((true, vec![None, at(0)])),
            ),
            (
                format!("recover=b%3Ac%3A{e}%3A3"),
                Ok((true, vec![None, at(3)])),
            ),
            (
                format!("recover=a:{e}:1&recover=b:c:{e}:2"),
                Ok((true, vec![at(1), at(2)])),
            ),
            (format!("recover=a:{e}:1&recover=a:{e}:2"), Err(Twice)),
            (format!("recover=z:{e}:1"), Err(NotSubscribed)),
            (format!("recover=b:{e}:1"), Err(NotSubscribed)),
            (format!("recover=a:{e}:"), Err(BadRecover)),
            (format!("recover=a:{e}:+1"), Err(BadRecover)),
            (format!("recover=a:{e}:-1"), Err(BadRecover)),
            (
                format!("recover=a:{e}:18446744073709551616"),
                Err(BadRecover),
            ),
            ("recover=a:00000000000000AB:1".into(), Err(BadRecover)),
            ("recover=a:abc:1".into(), Err(BadRecover)),
            (format!("recover={e}:1"), Err(BadRecover)),
            ("recover=".into(), Err(BadRecover)),
            ("recover".into(), Err(BadRecover)),
        ];
        for (query, expected) in cases {
            assert_eq!(&run(query), expected, "{query}");
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
