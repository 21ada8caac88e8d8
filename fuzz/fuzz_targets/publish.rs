//! Request heads through the publish API checks and the broadcast route's
//! channel parsing, as `server::conn` applies them: route lookup, access,
//! body framing, the publish verdict, and `parse_subscription` on the rest
//! of a broadcast path and the query.
//!
//! An accepted publish's body (length-delimited or chunked) is then read
//! from the bytes after its head, as the connection does.
//!
//! Invariants: no panic; a body never grows past the limit and stops
//! exactly at its end; an accepted publish names a valid channel and a body
//! within the limit; an accepted subscription lists 1 to 16 distinct valid
//! channel names; every answer is a well-formed HTTP response.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wshub::config::{Config, RouteConfig, RouteKind};
use wshub::fuzzing::http::{HeadReader, RequestHead};
use wshub::fuzzing::parse_subscription;
use wshub::fuzzing::publish::{self, Access, PublishBody};
use wshub::fuzzing::{Routes, Target};
use wshub::is_valid_channel_name;
use wshub_fuzz::{Input, check_response};

/// Channels one broadcast connection may ask for (the config default).
const MAX_CHANNELS: usize = 16;
const TOKEN: &str = "s3cret-t0ken";
const MAX_MESSAGE_SIZES: [u64; 4] = [0, 1, 1 << 20, u64::MAX];
/// Heads read from one payload before stopping.
const MAX_HEADS: usize = 8;

fn routes() -> Routes {
    let config = Config {
        routes: vec![
            RouteConfig::new("/echo", RouteKind::Echo),
            RouteConfig::new("/live", RouteKind::Broadcast),
        ],
        ..Config::default()
    };
    Routes::new(&config)
}

fn access(param: u8) -> Access<'static> {
    match param & 0x03 {
        0 => Access::Token(TOKEN),
        1 => Access::LoopbackOnly {
            peer_is_loopback: false,
        },
        _ => Access::LoopbackOnly {
            peer_is_loopback: true,
        },
    }
}

/// Checks one head; returns the body reader of an accepted publish, which
/// takes the bytes that follow the head.
fn check_head(head: &RequestHead, routes: &Routes, param: u8) -> Option<(PublishBody, u64)> {
    let max_message_size = MAX_MESSAGE_SIZES[usize::from((param >> 2) & 0x03)];
    let _ = publish::keep_alive(head);
    let _ = publish::body_length(head);
    let target = routes.resolve(&head.path);
    let mut out = Vec::new();
    if let Err(refusal) = publish::authorize(head, access(param)) {
        assert!(matches!(refusal.status, 401 | 403), "{refusal}");
        refusal.write_response(&mut out);
        check_response(&out, refusal.status);
        out.clear();
    }
    // Every path goes through the publish checks, not only the prefix, so
    // arbitrary strings reach the channel-name rules too.
    let channel = match target {
        Target::Publish { channel } => channel,
        _ => head.path.trim_start_matches('/'),
    };
    let body = match publish::check_publish(head, channel, max_message_size) {
        Ok(accepted) => {
            assert!(is_valid_channel_name(&accepted.channel));
            assert_eq!(accepted.channel, channel);
            assert!(accepted.body_len as u64 <= max_message_size);
            publish::write_published(&accepted.channel, 7, None, accepted.keep_alive, &mut out);
            check_response(&out, 200);
            Some((
                PublishBody::new(accepted, max_message_size),
                max_message_size,
            ))
        }
        Err(refusal) => {
            refusal.write_response(&mut out);
            check_response(&out, refusal.status);
            None
        }
    };
    let rest = match target {
        Target::Route { rest, .. } => rest,
        _ => head.path.as_str(),
    };
    if let Ok(channels) = parse_subscription(rest, head.query.as_deref(), MAX_CHANNELS) {
        assert!((1..=MAX_CHANNELS).contains(&channels.len()));
        for (i, name) in channels.iter().enumerate() {
            assert!(is_valid_channel_name(name), "{name:?}");
            assert!(!channels[..i].contains(name), "duplicate {name:?}");
        }
    }
    body
}

/// Feeds a publish body: it wants more input, or is complete having used
/// some of `chunk` (the rest is the next request), or was refused (the
/// connection would close: stop).
enum BodyStep {
    More,
    Done(usize),
    Refused,
}

fn feed_body(body: &mut PublishBody, limit: u64, chunk: &[u8]) -> BodyStep {
    match body.feed(chunk) {
        Ok(used) => {
            assert!(used <= chunk.len());
            assert!(body.data.len() as u64 <= limit, "body past the limit");
            if body.is_complete() {
                BodyStep::Done(used)
            } else {
                assert_eq!(used, chunk.len(), "an incomplete body left input behind");
                BodyStep::More
            }
        }
        Err(refusal) => {
            let mut out = Vec::new();
            refusal.write_response(&mut out);
            check_response(&out, refusal.status);
            BodyStep::Refused
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::<1>::parse(data) else {
        return;
    };
    let routes = routes();
    let mut reader = HeadReader::new();
    let mut heads = 0;
    let mut body: Option<(PublishBody, u64)> = None;
    for window in input.bounds.windows(2) {
        let mut chunk = &input.payload[window[0]..window[1]];
        loop {
            if let Some((publish_body, limit)) = body.as_mut() {
                match feed_body(publish_body, *limit, chunk) {
                    BodyStep::More => break,
                    BodyStep::Done(used) => {
                        body = None;
                        chunk = &chunk[used..];
                        if chunk.is_empty() {
                            break;
                        }
                    }
                    BodyStep::Refused => return,
                }
            }
            match reader.feed(chunk) {
                Ok(Some((head, used))) => {
                    body = check_head(&head, &routes, input.params[0]);
                    heads += 1;
                    if heads == MAX_HEADS {
                        return;
                    }
                    chunk = &chunk[used..];
                    if chunk.is_empty() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
