//! Signed-token parsing: the payload is taken as a token and put in each
//! place a request carries one (`Authorization: Bearer`, the `auth`
//! cookie, the `token` query parameter), then verified with an in-memory
//! HS256 key set; the payload is also read as a whole request head whose
//! token, if any, is found and verified the same way.
//!
//! Invariants: no panic, whatever the bytes (base64 and JSON decoding into
//! fixed buffers, the header and claims visitors, the signature check, the
//! claim checks and the grants all see attacker-chosen input here).
//!
//! The input layout is the common one; `k` cut points split the payload
//! for the head reader only.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wshub::fuzzing::fuzz_token;
use wshub::fuzzing::http::{HeadReader, RequestHead};
use wshub_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::<0>::parse(data) else {
        return;
    };
    let payload = input.payload;
    let text = String::from_utf8_lossy(payload);
    let mut bearer = b"Bearer ".to_vec();
    bearer.extend_from_slice(payload);
    let mut cookie = b"a=1; auth=".to_vec();
    cookie.extend_from_slice(payload);
    let head = RequestHead {
        method: "GET".to_owned(),
        path: "/live/news".to_owned(),
        query: Some(format!("channel=news&token={text}")),
        minor_version: 1,
        headers: vec![
            ("Authorization".to_owned(), bearer),
            ("Cookie".to_owned(), cookie),
        ],
    };
    fuzz_token(&head, &text);
    let mut bare = head.clone();
    bare.headers.clear();
    fuzz_token(&bare, "");
    let mut reader = HeadReader::new();
    for window in input.bounds.windows(2) {
        match reader.feed(&payload[window[0]..window[1]]) {
            Ok(Some((head, _))) => {
                fuzz_token(&head, "");
                return;
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
});
