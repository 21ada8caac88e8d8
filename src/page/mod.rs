//! The watch page: one self-contained HTML file (`watch.html`, with its
//! style and script inline) compiled into the binary and served at
//! [`crate::config::PAGE_PATH`] when `page = true`.
//!
//! Owns: the page's bytes and the headers it is served with.
//! Must never: load anything from elsewhere (no external scripts, styles,
//! fonts or images: the page works offline and on a locked-down network),
//! or be served when the setting is off.

/// The page itself.
pub(crate) const HTML: &str = include_str!("watch.html");

/// Response headers of the page. The policy allows only the page's own
/// inline style and script and connections back to this server.
pub(crate) const HEADERS: &[(&str, &str)] = &[
    ("Content-Type", "text/html; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    ("X-Content-Type-Options", "nosniff"),
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
         connect-src 'self'; base-uri 'none'; form-action 'none'",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for needle in ["src=", "href=", "@import", "url(", "http://", "https://"] {
            assert!(!HTML.contains(needle), "the page refers outside: {needle}");
        }
        assert!(HTML.starts_with("<!doctype html>"));
    }
}
