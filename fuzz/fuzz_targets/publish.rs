//! Request heads through the publish API checks and the broadcast route's
//! channel parsing, as `server::conn` applies them: route lookup, access,
//! body framing, the publish verdict, and `parse_subscription` on the rest
//! of a broadcast path and the query.
//!
//! Invariants: no panic; an accepted publish names a valid channel and a body
//! within the limit; an accepted subscription lists 1 to 16 distinct valid
//! channel names; every answer is a well-formed HTTP response.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wshub::config::{Config, RouteConfig, RouteKind};
use wshub::hub::names::{is_valid_channel_name, parse_subscription};
use wshub::hub::publish::{self, Access};
use wshub::protocol::http::{HeadReader, RequestHead};
use wshub::route::{Routes, Target};
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

fn check_head(head: &RequestHead, routes: &Routes, param: u8) {
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
    match publish::check_publish(head, channel, max_message_size) {
        Ok(accepted) => {
            assert!(is_valid_channel_name(&accepted.channel));
            assert_eq!(accepted.channel, channel);
            assert!(accepted.body_len as u64 <= max_message_size);
            publish::write_published(&accepted.channel, 7, accepted.keep_alive, &mut out);
            check_response(&out, 200);
        }
        Err(refusal) => {
            refusal.write_response(&mut out);
            check_response(&out, refusal.status);
        }
    }
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
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::<1>::parse(data) else {
        return;
    };
    let routes = routes();
    let mut reader = HeadReader::new();
    let mut heads = 0;
    for window in input.bounds.windows(2) {
        let mut chunk = &input.payload[window[0]..window[1]];
        loop {
            match reader.feed(chunk) {
                Ok(Some((head, used))) => {
                    check_head(&head, &routes, input.params[0]);
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
