//! What the fuzz targets share: the layout of a fuzz input and a check that
//! an HTTP response the server would send is well formed.
//!
//! Input layout (every target):
//!
//! ```text
//! byte 0            low 3 bits: how many cut points follow (0..=7)
//! PARAMS bytes      target-specific parameters (limits, pauses, access)
//! 2 bytes per cut   little-endian u16, taken modulo (payload length + 1)
//! the rest          the payload: the bytes a client sends
//! ```
//!
//! The cuts are sorted, so any values split the payload into chunks
//! (possibly empty) that are fed one call at a time. A seed with byte 0 set
//! to zero and zeroed parameters is just the payload behind a short prefix,
//! which keeps hand-written seeds readable.

/// A decoded fuzz input.
#[derive(Debug)]
pub struct Input<'a, const PARAMS: usize> {
    pub params: [u8; PARAMS],
    pub payload: &'a [u8],
    /// Chunk boundaries: starts with 0, ends with `payload.len()`,
    /// non-decreasing.
    pub bounds: Vec<usize>,
}

impl<'a, const PARAMS: usize> Input<'a, PARAMS> {
    /// `None` when `data` is too short to hold the prefix it announces.
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (&first, rest) = data.split_first()?;
        let cuts = usize::from(first & 0x07);
        let (params, rest) = rest.split_first_chunk::<PARAMS>()?;
        let cut_bytes = rest.get(..2 * cuts)?;
        let payload = &rest[2 * cuts..];
        let mut bounds = Vec::with_capacity(cuts + 2);
        bounds.push(0);
        let mut points: Vec<usize> = cut_bytes
            .chunks_exact(2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])) % (payload.len() + 1))
            .collect();
        points.sort_unstable();
        bounds.extend(points);
        bounds.push(payload.len());
        Some(Input {
            params: *params,
            payload,
            bounds,
        })
    }

    /// The whole payload as a single chunk.
    pub fn whole(&self) -> [usize; 2] {
        [0, self.payload.len()]
    }
}

/// Asserts that `out` is one complete HTTP/1.1 response with `status`:
/// a status line, header lines free of stray CR or LF (no header injection),
/// a blank line, and a body whose length matches `Content-Length` (a `101`
/// has neither body nor length).
pub fn check_response(out: &[u8], status: u16) {
    let head_len = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head ends with a blank line")
        + 4;
    let head = std::str::from_utf8(&out[..head_len]).expect("response head is UTF-8");
    let body = &out[head_len..];
    let mut lines = head[..head.len() - 4].split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    assert!(
        status_line.starts_with(&format!("HTTP/1.1 {status} ")),
        "status line {status_line:?}, expected {status}"
    );
    let mut content_length = None;
    for line in std::iter::once(status_line).chain(lines) {
        assert!(
            !line.is_empty() && !line.contains(['\r', '\n']),
            "malformed response line {line:?} in {head:?}"
        );
    }
    for line in head[..head.len() - 4].split("\r\n").skip(1) {
        let (name, value) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("header line without a colon: {line:?}"));
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':'),
            "bad header name {name:?}"
        );
        if name.eq_ignore_ascii_case("Content-Length") {
            assert!(content_length.is_none(), "two Content-Length headers");
            content_length = Some(value.parse::<usize>().expect("numeric Content-Length"));
        }
    }
    if status == 101 {
        assert_eq!(content_length, None, "101 with a Content-Length");
        assert!(body.is_empty(), "101 with a body");
    } else {
        assert_eq!(content_length, Some(body.len()), "Content-Length vs body");
    }
}
