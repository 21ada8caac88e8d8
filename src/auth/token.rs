//! Where a token travels in a request: `Authorization: Bearer <token>`,
//! then a cookie (its name configured), then the `token` query parameter.
//! Browsers cannot set headers on `new WebSocket()` or
//! `new EventSource()`, hence the other two.
//!
//! The rule: the first place that holds a token decides, and a token found
//! there that fails verification is refused: a later place is never tried
//! instead, so a cookie (which any page of the site may have set) never
//! overrides an explicit token. A place that says two things is refused as
//! [`Failure::Ambiguous`] rather than guessed at: several `Authorization`
//! headers, a cookie of that name with two different values, or two
//! different `token` parameters. A `Bearer` header without a token is
//! malformed, not absent. An `Authorization` header of another scheme, an
//! empty cookie and an empty `token=` count as absent.
//!
//! Owns: that order and the parsing of each place.
//! Must never: log, copy or count a token's text; copy anything unless the
//! query parameter is percent-encoded.

use std::borrow::Cow;

use super::Failure;
use crate::protocol::http::{RequestHead, trim_ows};

/// The query parameter that carries a token (the subscription parser
/// ignores it, as it does every parameter but `channel`).
pub(crate) const TOKEN_PARAM: &str = "token";

/// The scheme of an `Authorization` header carrying a token.
const BEARER: &[u8] = b"Bearer";

/// Where a token was found (for the debug log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Header,
    Cookie,
    Query,
}

/// The token a request carries, from the first place that has one;
/// `cookie` is the configured cookie name, if any. `Missing` when no place
/// has one.
pub(crate) fn find<'a>(
    head: &'a RequestHead,
    cookie: Option<&str>,
) -> Result<(Cow<'a, str>, Source), Failure> {
    if let Some(token) = bearer(head)? {
        return Ok((Cow::Borrowed(token), Source::Header));
    }
    if let Some(name) = cookie
        && let Some(token) = cookie_value(head, name)?
    {
        return Ok((Cow::Borrowed(token), Source::Cookie));
    }
    match head.query.as_deref() {
        Some(query) => query_param(query)?.map(|t| (t, Source::Query)),
        None => None,
    }
    .ok_or(Failure::Missing)
}

/// The token of an `Authorization: Bearer` header (scheme
/// case-insensitive); `None` without the header or with another scheme.
pub(crate) fn bearer(head: &RequestHead) -> Result<Option<&str>, Failure> {
    if head.header_count("Authorization") > 1 {
        return Err(Failure::Ambiguous);
    }
    let Some(value) = head.header("Authorization") else {
        return Ok(None);
    };
    let value = trim_ows(value);
    let scheme_len = value
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(value.len());
    if !value[..scheme_len].eq_ignore_ascii_case(BEARER) {
        return Ok(None);
    }
    non_empty(trim_ows(&value[scheme_len..]))
        .map(Some)
        .ok_or(Failure::Malformed)
}

/// The value of cookie `name` in the `Cookie` headers (RFC 6265 §5.4:
/// `name=value` pairs separated by `;`, over one or several lines);
/// surrounding quotes are removed. The same name with two different
/// values is ambiguous; an empty value counts as absent.
fn cookie_value<'a>(head: &'a RequestHead, name: &str) -> Result<Option<&'a str>, Failure> {
    let mut found: Option<&[u8]> = None;
    let values = head
        .header_values("Cookie")
        .flat_map(|line| line.split(|&b| b == b';'))
        .filter_map(|pair| {
            let pair = trim_ows(pair);
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (key, value) = (trim_ows(&pair[..eq]), trim_ows(&pair[eq + 1..]));
            (key == name.as_bytes()).then(|| {
                value
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(value)
            })
        })
        .filter(|value| !value.is_empty());
    for value in values {
        match found {
            Some(seen) if seen != value => return Err(Failure::Ambiguous),
            _ => found = Some(value),
        }
    }
    found
        .map(|v| non_empty(v).ok_or(Failure::Malformed))
        .transpose()
}

/// The non-empty `token` parameter of a query string, percent-decoded; two
/// different ones are ambiguous.
fn query_param(query: &str) -> Result<Option<Cow<'_, str>>, Failure> {
    let mut found: Option<Cow<'_, str>> = None;
    let values = form_urlencoded::parse(query.as_bytes())
        .filter(|(key, value)| key == TOKEN_PARAM && !value.is_empty())
        .map(|(_, value)| value);
    for value in values {
        match &found {
            Some(seen) if *seen != value => return Err(Failure::Ambiguous),
            _ => found = Some(value),
        }
    }
    Ok(found)
}

fn non_empty(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(query: Option<&str>, headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: "GET".to_owned(),
            path: "/live".to_owned(),
            query: query.map(str::to_owned),
            minor_version: 1,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    fn found(h: &RequestHead, cookie: Option<&str>) -> Option<(String, Source)> {
        find(h, cookie).ok().map(|(t, s)| (t.into_owned(), s))
    }

    #[test]
    fn header_then_cookie_then_query() {
        let all = head(
            Some("channel=a&token=q"),
            &[("Cookie", "x=1; tok=c"), ("authorization", "bearer  h ")],
        );
        assert_eq!(found(&all, Some("tok")), Some(("h".into(), Source::Header)));
        let no_header = head(Some("token=q"), &[("Cookie", "x=1; tok=c")]);
        assert_eq!(
            found(&no_header, Some("tok")),
            Some(("c".into(), Source::Cookie))
        );
        assert_eq!(found(&no_header, None), Some(("q".into(), Source::Query)));
        assert_eq!(
            found(&no_header, Some("other")),
            Some(("q".into(), Source::Query))
        );
    }

    #[test]
    fn other_schemes_empty_values_and_lookalikes_are_not_tokens() {
        let cases = [
            head(None, &[("Authorization", "Basic dXNlcjpwYXNz")]),
            head(None, &[("Authorization", "Bearerx y")]),
            head(None, &[("Cookie", "toke=1; tok2=2; tok=")]),
            head(Some("tokens=1&xtoken=2&token="), &[]),
        ];
        for h in &cases {
            assert_eq!(found(h, Some("tok")), None, "{h:?}");
        }
    }

    #[test]
    fn cookies_across_headers_quoted_and_query_percent_encoded() {
        let h = head(None, &[("Cookie", "a=1"), ("Cookie", "tok=\"v.w.x\"")]);
        assert_eq!(
            found(&h, Some("tok")),
            Some(("v.w.x".into(), Source::Cookie))
        );
        let q = head(Some("token=a%2Eb.c"), &[]);
        assert_eq!(found(&q, None), Some(("a.b.c".into(), Source::Query)));
    }

    #[test]
    fn an_explicit_but_bad_place_is_refused_not_skipped() {
        let cookie = ("Cookie", "tok=c");
        let cases = [
            // A Bearer header without a token does not fall through to the
            // cookie.
            (
                head(None, &[("Authorization", "Bearer "), cookie]),
                Failure::Malformed,
            ),
            (
                head(None, &[("Authorization", "bearer"), cookie]),
                Failure::Malformed,
            ),
            // Two Authorization headers, even if one is another scheme.
            (
                head(
                    None,
                    &[("Authorization", "Bearer a"), ("Authorization", "Bearer b")],
                ),
                Failure::Ambiguous,
            ),
            (
                head(
                    None,
                    &[
                        ("Authorization", "Basic eA=="),
                        ("Authorization", "Bearer b"),
                    ],
                ),
                Failure::Ambiguous,
            ),
            // The cookie twice with different values, on one line or two.
            (
                head(Some("token=q"), &[("Cookie", "tok=a; tok=b")]),
                Failure::Ambiguous,
            ),
            (
                head(None, &[("Cookie", "tok=a"), ("Cookie", "x=1; tok=\"b\"")]),
                Failure::Ambiguous,
            ),
            // The token parameter twice, one of them percent-encoded.
            (head(Some("token=a.b&token=a%2Ec"), &[]), Failure::Ambiguous),
            (head(None, &[]), Failure::Missing),
        ];
        for (h, want) in &cases {
            assert_eq!(find(h, Some("tok")).map(|_| ()), Err(*want), "{h:?}");
        }
        // Repeating the same value says one thing.
        let same = head(Some("token=a.b&token=a%2Eb"), &[("Cookie", "t=1")]);
        assert_eq!(
            found(&same, Some("tok")),
            Some(("a.b".into(), Source::Query))
        );
        let same = head(None, &[("Cookie", "tok=v; tok=\"v\"")]);
        assert_eq!(
            found(&same, Some("tok")),
            Some(("v".into(), Source::Cookie))
        );
        // A header of another scheme is not a bearer token: the cookie is
        // next.
        let basic = head(None, &[("Authorization", "Basic eA=="), cookie]);
        assert_eq!(
            found(&basic, Some("tok")),
            Some(("c".into(), Source::Cookie))
        );
    }
}
