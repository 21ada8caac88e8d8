//! Where a token travels in a request: `Authorization: Bearer <token>`,
//! then a cookie (its name configured), then the `token` query parameter —
//! the first one present is used. Browsers cannot set headers on
//! `new WebSocket()` or `new EventSource()`, hence the other two.
//!
//! Owns: that order and the parsing of each place.
//! Must never: log, copy or count a token's text; copy anything unless the
//! query parameter is percent-encoded.

use std::borrow::Cow;

use crate::protocol::http::{RequestHead, trim_ows};

/// The query parameter that carries a token (the subscription parser
/// ignores it, as it does every parameter but `channel`).
pub(crate) const TOKEN_PARAM: &str = "token";

/// The scheme of an `Authorization` header carrying a token.
const BEARER: &[u8] = b"Bearer ";

/// Where a token was found (for the debug log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Header,
    Cookie,
    Query,
}

/// The token a request carries, from the first place that has one;
/// `cookie` is the configured cookie name, if any.
pub(crate) fn find<'a>(
    head: &'a RequestHead,
    cookie: Option<&str>,
) -> Option<(Cow<'a, str>, Source)> {
    if let Some(token) = bearer(head) {
        return Some((Cow::Borrowed(token), Source::Header));
    }
    if let Some(token) = cookie.and_then(|name| cookie_value(head, name)) {
        return Some((Cow::Borrowed(token), Source::Cookie));
    }
    query_param(head.query.as_deref()?).map(|t| (t, Source::Query))
}

/// The token of an `Authorization: Bearer` header (scheme case-insensitive).
pub(crate) fn bearer(head: &RequestHead) -> Option<&str> {
    let value = trim_ows(head.header("Authorization")?);
    let scheme = value.get(..BEARER.len())?;
    if !scheme.eq_ignore_ascii_case(BEARER) {
        return None;
    }
    non_empty(trim_ows(value.get(BEARER.len()..)?))
}

/// The value of cookie `name` in any `Cookie` header (RFC 6265 §5.4:
/// `name=value` pairs separated by `;`); surrounding quotes are removed.
fn cookie_value<'a>(head: &'a RequestHead, name: &str) -> Option<&'a str> {
    head.header_values("Cookie")
        .flat_map(|line| line.split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = trim_ows(pair);
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (key, value) = (trim_ows(&pair[..eq]), &pair[eq + 1..]);
            if key != name.as_bytes() {
                return None;
            }
            let value = trim_ows(value);
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            non_empty(value)
        })
}

/// The first non-empty `token` parameter of a query string, percent-decoded.
fn query_param(query: &str) -> Option<Cow<'_, str>> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, value)| key == TOKEN_PARAM && !value.is_empty())
        .map(|(_, value)| value)
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
        find(h, cookie).map(|(t, s)| (t.into_owned(), s))
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
            head(None, &[("Authorization", "Bearer ")]),
            head(None, &[("Authorization", "Bearer")]),
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
}
