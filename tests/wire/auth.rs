//! Signed-token (JWT) authorisation over real sockets, with tokens minted by
//! PyJWT: every algorithm against valid tokens and forgeries, the three
//! places a token travels, channel grants, head-size limits, expiry of an
//! open connection, the publish API, reload switching keys, and a Python
//! `websockets` client with the token in the query string.

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use rustix::process::Signal;
use serde_json::{Value, json};
use wshub::config::Config;

use crate::support::client::{HttpResponse, RawClient, fresh_key, upgrade_request_with};
use crate::support::daemon::{BIN, Daemon};
use crate::support::http::{assert_published, metric, publish_request_with};
use crate::support::jwt::{Keys, Spec, now, signing_key, verifying_key};
use crate::support::python::run_websockets_client;
use crate::support::server::TestServer;

/// Every algorithm a route is tested with, and its route (`/<lowercase>`).
const ALGORITHMS: [&str; 7] = [
    "HS256", "HS384", "HS512", "RS256", "PS256", "ES256", "EdDSA",
];

fn route_of(alg: &str) -> String {
    format!("/{}", alg.to_lowercase())
}

/// A server with a broadcast route per algorithm (`/hs256`, ...), one on a
/// JWKS (`/jwks`, ES256, kids "ec1" and "ec2"), an echo route `/echo-auth`,
/// and the publish API on the HS256 key set. Tokens must be for audience
/// "wshub" from issuer "tests"; the HS256 set also reads cookie `tok`.
fn server(keys: &Keys, leeway: &str) -> TestServer {
    let mut text = String::from(
        "allowed_origins = [\"https://app.example\"]\npublish_auth = \"hs256\"\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\n",
    );
    for alg in ALGORITHMS {
        text.push_str(&format!(
            "[[route]]\npath = \"{}\"\nkind = \"broadcast\"\nauth = \"{}\"\n",
            route_of(alg),
            alg.to_lowercase()
        ));
    }
    text.push_str("[[route]]\npath = \"/jwks\"\nkind = \"broadcast\"\nauth = \"jwks\"\n");
    text.push_str("[[route]]\npath = \"/echo-auth\"\nkind = \"echo\"\nauth = \"hs256\"\n");
    let rules = format!("audience = \"wshub\"\nissuer = \"tests\"\nleeway = \"{leeway}\"\n");
    for alg in ALGORITHMS {
        let file = if alg.starts_with("HS") {
            "secret_file"
        } else {
            "public_key_file"
        };
        let cookie = if alg == "HS256" {
            "cookie = \"tok\"\n"
        } else {
            ""
        };
        text.push_str(&format!(
            "[auth.{}]\nalgorithm = \"{alg}\"\n{file} = {:?}\n{rules}{cookie}",
            alg.to_lowercase(),
            keys.path(verifying_key(alg)).display().to_string()
        ));
    }
    text.push_str(&format!(
        "[auth.jwks]\nalgorithm = \"ES256\"\njwks_file = {:?}\n{rules}",
        keys.path("jwks.json").display().to_string()
    ));
    TestServer::with_config(Config::from_toml_str(&text).expect("test config"))
}

/// Claims that pass every check, granting `channels`.
fn claims(channels: &[&str]) -> Value {
    let now = now();
    json!({"exp": now + 300, "iat": now, "aud": "wshub", "iss": "tests",
           "sub": "user-42", "channels": channels})
}

/// The claims of a publisher's token: its grants are in `publish`, never
/// in the subscribe claim.
fn publisher_claims(channels: &[&str]) -> Value {
    let now = now();
    json!({"exp": now + 300, "iat": now, "aud": "wshub", "iss": "tests",
           "sub": "backend", "publish": channels})
}

/// `claims` with `changes` merged in.
fn claims_with(channels: &[&str], changes: Value) -> Value {
    let mut c = claims(channels);
    if let (Some(c), Value::Object(changes)) = (c.as_object_mut(), changes) {
        c.extend(changes);
    }
    c
}

/// Sends an upgrade for `path` with extra header lines; returns the answer
/// and the client (open on a 101).
fn upgrade(server: &TestServer, path: &str, headers: &str) -> (HttpResponse, RawClient) {
    let mut client = RawClient::connect(server.addr);
    let host = server.addr.to_string();
    client.send(upgrade_request_with(path, &host, &fresh_key(), headers).as_bytes());
    (client.read_http_response(), client)
}

fn status(server: &TestServer, path: &str, headers: &str) -> u16 {
    let (response, _) = upgrade(server, path, headers);
    match response.status {
        401 => {
            assert_eq!(response.body_text(), "unauthorized\n");
            assert_eq!(response.header("WWW-Authenticate"), Some("Bearer"));
        }
        403 => assert_eq!(response.body_text(), "forbidden\n"),
        _ => {}
    }
    response.status
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// `token` with its payload replaced by `claims` (signature kept).
fn tampered(token: &str, claims: &Value) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
    parts[1] = &payload;
    parts.join(".")
}

#[test]
fn every_algorithm_accepts_valid_tokens_and_refuses_forged_ones() {
    let keys = Keys::new();
    let server = server(&keys, "5s");
    let now = now();
    let cases: [(&str, Value, Option<&'static str>, u16); 7] = [
        ("valid", claims(&["news"]), None, 101),
        (
            "expired",
            claims_with(&["news"], json!({"exp": now - 60})),
            None,
            401,
        ),
        (
            "not yet valid",
            claims_with(&["news"], json!({"nbf": now + 60})),
            None,
            401,
        ),
        (
            "wrong audience",
            claims_with(&["news"], json!({"aud": "other"})),
            None,
            401,
        ),
        (
            "wrong issuer",
            claims_with(&["news"], json!({"iss": "other"})),
            None,
            401,
        ),
        ("alg none", claims(&["news"]), Some("none"), 401),
        (
            "no exp",
            claims_with(&["news"], json!({"exp": null})),
            None,
            401,
        ),
    ];
    let mut specs = Vec::new();
    for alg in ALGORITHMS {
        for (_, claims, forge, _) in &cases {
            let mut claims = claims.clone();
            if claims["exp"].is_null() {
                claims.as_object_mut().map(|c| c.remove("exp"));
            }
            let mut spec = Spec::new(alg, signing_key(alg), claims);
            spec.forge = *forge;
            specs.push(spec);
        }
    }
    let tokens = keys.mint(&specs);
    let mut tokens = tokens.iter();
    for alg in ALGORITHMS {
        let route = route_of(alg);
        let mut valid = String::new();
        for (what, _, _, want) in &cases {
            let token = tokens.next().expect("a token per case");
            if *what == "valid" {
                valid = token.clone();
            }
            let got = status(&server, &format!("{route}/news"), &bearer(token));
            assert_eq!(got, *want, "{alg}: {what}");
        }
        let forged = tampered(&valid, &claims(&["*"]));
        assert_eq!(
            status(&server, &format!("{route}/news"), &bearer(&forged)),
            401,
            "{alg}: tampered"
        );
        let truncated = &valid[..valid.len() - 8];
        assert_eq!(
            status(&server, &format!("{route}/news"), &bearer(truncated)),
            401,
            "{alg}: truncated"
        );
        // Another algorithm's valid token never passes (alg pinned by the key).
        let other = if alg == "HS256" { "/es256" } else { "/hs256" };
        assert_eq!(
            status(&server, &format!("{other}/news"), &bearer(&valid)),
            401,
            "{alg} on {other}"
        );
    }
    // HS256 with the RSA public key's PEM bytes as the secret, on the RS256 route.
    let mut confused = Spec::new("HS256", "rsa.pub.pem", claims(&["news"]));
    confused.forge = Some("hmac-with-public-key");
    let confused = keys.mint_one(confused);
    assert_eq!(status(&server, "/rs256/news", &bearer(&confused)), 401);
    let refused = |reason: &str| {
        metric(
            server.addr,
            &format!("wshub_auth_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    let n = ALGORITHMS.len() as u64;
    assert_eq!(refused("expired"), n);
    assert_eq!(refused("not_yet_valid"), n);
    assert_eq!(refused("audience"), n);
    assert_eq!(refused("issuer"), n);
    assert_eq!(refused("claims"), n, "no exp");
    // A cut signature may no longer be valid base64: malformed, not a bad signature.
    let forged = refused("signature") + refused("malformed");
    assert_eq!(forged, 2 * n, "tampered and truncated");
    assert_eq!(
        refused("algorithm"),
        2 * n + 1,
        "alg none, other route, key confusion"
    );
}

#[test]
fn a_jwks_key_is_chosen_by_kid() {
    let keys = Keys::new();
    let server = server(&keys, "5s");
    let spec = |key: &'static str, kid: Option<&str>| {
        let mut s = Spec::new("ES256", key, claims(&["news"]));
        if let Some(kid) = kid {
            s.headers = json!({"kid": kid});
        }
        s
    };
    let tokens = keys.mint(&[
        spec("ec.key.pem", Some("ec1")),
        spec("ec2.key.pem", Some("ec2")),
        spec("ec.key.pem", Some("ec2")),
        spec("ec.key.pem", None),
        spec("ec.key.pem", Some("ec9")),
    ]);
    let want = [101, 101, 401, 401, 401];
    for (token, want) in tokens.iter().zip(want) {
        assert_eq!(status(&server, "/jwks/news", &bearer(token)), want);
    }
    assert_eq!(
        metric(
            server.addr,
            "wshub_auth_refused_total{reason=\"unknown_key\"}"
        ),
        2
    );
}

#[test]
fn the_token_is_taken_from_the_header_then_the_cookie_then_the_query() {
    let keys = Keys::new();
    let server = server(&keys, "5s");
    let good = keys.mint_one(Spec::new("HS256", "hs.secret", claims(&["news"])));
    let bad = "e30.e30.e30";
    let cookie = |t: &str| format!("Origin: https://app.example\r\nCookie: a=1; tok={t}\r\n");
    let cases = [
        ("/hs256/news".to_owned(), bearer(&good), 101),
        ("/hs256/news".to_owned(), cookie(&good), 101),
        (format!("/hs256/news?token={good}"), String::new(), 101),
        (
            format!("/hs256?token={good}&channel=news"),
            String::new(),
            101,
        ),
        (format!("/hs256/news?token={good}"), bearer(bad), 401),
        (format!("/hs256/news?token={bad}"), cookie(&good), 101),
        (
            "/hs256/news".to_owned(),
            format!("{}{}", bearer(&good), cookie(bad)),
            101,
        ),
        ("/hs256/news".to_owned(), String::new(), 401),
    ];
    for (path, headers, want) in cases {
        assert_eq!(status(&server, &path, &headers), want, "{path} {headers:?}");
    }
    // A cookie sent along by a page on another site: the Origin check refuses it.
    let evil = cookie(&good).replace("app.example", "evil.example");
    assert_eq!(upgrade(&server, "/hs256/news", &evil).0.status, 403);
    assert_eq!(
        metric(server.addr, "wshub_auth_refused_total{reason=\"missing\"}"),
        1
    );
}

#[test]
fn channels_are_granted_by_exact_name_and_by_prefix() {
    let keys = Keys::new();
    let server = server(&keys, "5s");
    let token = keys.mint_one(Spec::new(
        "HS256",
        "hs.secret",
        claims(&["news", "user.42.*"]),
    ));
    let auth = bearer(&token);
    let cases = [
        ("/hs256/news", 101),
        ("/hs256/user.42.inbox", 101),
        (
            "/hs256?channel=news&channel=user.42.a&channel=user.42.b",
            101,
        ),
        ("/hs256?channel=news&channel=sports", 403),
        ("/hs256/user.43.inbox", 403),
        ("/hs256/user.42", 403),
        ("/hs256/bad*name", 400),
    ];
    for (path, want) in cases {
        assert_eq!(status(&server, path, &auth), want, "{path}");
    }
    // A granted subscription receives what is published to it.
    let (response, mut subscriber) = upgrade(&server, "/hs256/user.42.inbox", &auth);
    assert_eq!(response.status, 101);
    let publisher = keys.mint_one(Spec::new(
        "HS256",
        "hs.secret",
        publisher_claims(&["user.*"]),
    ));
    let mut http = RawClient::connect(server.addr);
    http.send(&publish_request_with(
        "user.42.inbox",
        Some("text/plain"),
        &bearer(&publisher),
        b"hi",
    ));
    assert_published(&http.read_http_response(), "user.42.inbox");
    assert_eq!(subscriber.expect_text(), "hi");
    // The echo route with auth takes a token too, and no channel.
    assert_eq!(status(&server, "/echo-auth", &auth), 101);
    assert_eq!(status(&server, "/echo-auth", ""), 401);
}

#[test]
fn a_large_token_fits_and_one_past_the_head_limit_is_refused_cleanly() {
    let keys = Keys::new();
    let server = server(&keys, "5s");
    let padded = |n: usize| claims_with(&["news"], json!({"pad": "x".repeat(n)}));
    let tokens = keys.mint(&[
        Spec::new("HS256", "hs.secret", padded(5_600)),
        Spec::new("HS256", "hs.secret", padded(8_000)),
    ]);
    assert!(
        tokens[0].len() > 7_500 && tokens[0].len() < 8_000,
        "{}",
        tokens[0].len()
    );
    assert_eq!(status(&server, "/hs256/news", &bearer(&tokens[0])), 101);
    let (response, mut client) = upgrade(&server, "/hs256/news", &bearer(&tokens[1]));
    assert_eq!(response.status, 431, "{response:?}");
    client.expect_eof();
}

#[test]
fn an_open_connection_is_closed_with_4001_when_its_token_expires() {
    let keys = Keys::new();
    let server = server(&keys, "0s");
    let token = keys.mint_one(Spec::new(
        "HS256",
        "hs.secret",
        claims_with(&["news"], json!({"exp": now() + 2})),
    ));
    let (response, mut client) = upgrade(&server, "/hs256/news", &bearer(&token));
    assert_eq!(response.status, 101);
    client.set_read_timeout(Duration::from_secs(6));
    let close = client.expect_close(wshub::CLOSE_TOKEN_EXPIRED);
    assert_eq!(close.close_reason(), "token expired");
    assert_eq!(metric(server.addr, "wshub_auth_expired_closes_total"), 1);
}

#[test]
fn a_publish_token_is_scoped_to_its_channels() {
    let keys = Keys::new();
    let server = server(&keys, "5s");
    let tokens = keys.mint(&[
        Spec::new("HS256", "hs.secret", publisher_claims(&["alerts.*"])),
        Spec::new("ES256", "ec.key.pem", publisher_claims(&["alerts.*"])),
        Spec::new("HS256", "hs.secret", claims(&["alerts.*"])),
    ]);
    let publish = |channel: &str, headers: &str| {
        let mut http = RawClient::connect(server.addr);
        http.send(&publish_request_with(
            channel,
            Some("text/plain"),
            headers,
            b"x",
        ));
        http.read_http_response()
    };
    assert_published(&publish("alerts.fire", &bearer(&tokens[0])), "alerts.fire");
    // A channel it does not grant, and a subscriber's token (its channels
    // claim grants subscribing only).
    for (channel, token) in [("news", &tokens[0]), ("alerts.fire", &tokens[2])] {
        let forbidden = publish(channel, &bearer(token));
        assert_eq!(
            (forbidden.status, forbidden.body_text()),
            (403, "forbidden\n"),
            "{channel}"
        );
    }
    for headers in [String::new(), bearer(&tokens[1]), bearer("nonsense")] {
        let refused = publish("alerts.fire", &headers);
        assert_eq!(
            (refused.status, refused.body_text()),
            (401, "unauthorized\n"),
            "{headers}"
        );
    }
}

#[test]
fn python_websockets_connects_with_the_token_in_the_query_string() {
    let keys = Keys::new();
    let server = server(&keys, "5s");
    let token = keys.mint_one(Spec::new("HS256", "hs.secret", claims(&[])));
    let script = r#"
import asyncio, sys
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
async def main(url, token):
    async with connect(f"{url}?token={token}") as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), 5) == "hello"
    try:
        async with connect(url):
            raise SystemExit("connected without a token")
    except InvalidStatus as e:
        assert e.response.status_code == 401, e.response.status_code
    print("OK")
asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;
    let stdout = run_websockets_client(script, &[&server.url("/echo-auth"), &token]);
    assert!(stdout.contains("OK"), "{stdout}");
}

#[test]
fn reload_switches_keys_and_keeps_open_connections() {
    let keys = Keys::new();
    let secret = keys.path("hs.secret").display().to_string();
    let config = keys.dir.write(
        "wshub.toml",
        &format!(
            "log_level = \"debug\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[route]]\npath = \"/live\"\nkind = \"broadcast\"\nauth = \"app\"\n\
             [auth.app]\nalgorithm = \"HS256\"\nsecret_file = {secret:?}\naudience = \"wshub\"\n"
        ),
    );
    let mut daemon = Daemon::start(&config, &[("RUST_LOG", "debug")]);
    let addr = daemon.listening_address();
    let tokens = keys.mint(&[
        Spec::new("HS256", "hs.secret", claims(&["news"])),
        Spec::new("HS256", "hs_other.secret", claims(&["news"])),
    ]);
    let (old_token, new_token) = (&tokens[0], &tokens[1]);
    let open = |token: &str| {
        let mut client = RawClient::connect(addr);
        let path = format!("/live/news?token={token}");
        client.send(upgrade_request_with(&path, &addr.to_string(), &fresh_key(), "").as_bytes());
        (client.read_http_response().status, client)
    };
    let (status, mut kept) = open(old_token);
    assert_eq!(status, 101);
    assert_eq!(open(new_token).0, 401);

    let other = std::fs::read(keys.path("hs_other.secret")).expect("second secret");
    std::fs::write(keys.path("hs.secret"), other).expect("replace the secret");
    daemon.signal(Signal::HUP);
    daemon.wait_for_log("auth.app: keys changed");
    assert_eq!(open(old_token).0, 401, "the old key is gone");
    assert_eq!(open(new_token).0, 101);

    // A key file that cannot be used fails the reload; the keys stay.
    std::fs::write(keys.path("hs.secret"), "short").expect("break the secret");
    daemon.signal(Signal::HUP);
    let line = daemon.wait_for_log("reload failed");
    assert!(
        line.contains("auth.app.secret_file") && line.contains("hs.secret"),
        "{line}"
    );
    assert_eq!(open(new_token).0, 101);

    // The connection verified before the reload is still subscribed.
    let mut http = RawClient::connect(addr);
    http.send(&publish_request_with(
        "news",
        Some("text/plain"),
        "",
        b"still here",
    ));
    assert_published(&http.read_http_response(), "news");
    assert_eq!(kept.expect_text(), "still here");

    let log = daemon.log_text();
    assert!(log.contains("token refused"), "the log says why");
    for token in [old_token, new_token] {
        let signature = token.rsplit('.').next().unwrap_or_default();
        assert!(!log.contains(signature), "a token reached the log");
    }
}

#[test]
fn check_config_reads_the_key_files() {
    let keys = Keys::new();
    let config = keys.dir.write(
        "bad.toml",
        "[auth.app]\nalgorithm = \"ES256\"\npublic_key_file = \"/nonexistent/app.pem\"\n",
    );
    let output = Command::new(BIN)
        .arg("--check-config")
        .arg(&config)
        .output()
        .expect("run wshub");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/app.pem"), "{stderr}");
    let good = keys.dir.write(
        "good.toml",
        &format!(
            "[auth.app]\nalgorithm = \"ES256\"\npublic_key_file = {:?}\n",
            keys.path("ec.pub.pem").display().to_string()
        ),
    );
    let output = Command::new(BIN)
        .arg("--check-config")
        .arg(&good)
        .output()
        .expect("run wshub");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A chat route whose HS256 tokens carry a relay claim named `relay`.
fn chat_server(keys: &Keys) -> TestServer {
    let text = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\npath = \"/chat\"\nkind = \"broadcast\"\nclient_messages = \"broadcast\"\nauth = \"app\"\n\
         [auth.app]\nalgorithm = \"HS256\"\nsecret_file = {:?}\nrelay_claim = \"relay\"\naudience = \"wshub\"\n",
        keys.path("hs.secret").display().to_string()
    );
    TestServer::with_config(Config::from_toml_str(&text).expect("chat config"))
}

#[test]
fn a_chat_message_is_relayed_only_to_the_channels_the_relay_claim_grants() {
    let keys = Keys::new();
    let server = chat_server(&keys);
    let relay = |relay: &[&str]| claims_with(&["*"], json!({ "relay": relay }));
    let tokens = keys.mint(&[
        Spec::new("HS256", "hs.secret", relay(&["a"])),
        Spec::new("HS256", "hs.secret", relay(&[])),
        Spec::new("HS256", "hs.secret", relay(&["*"])),
    ]);
    let open = |path: &str, token: &str| {
        let (response, client) = upgrade(&server, path, &bearer(token));
        assert_eq!(response.status, 101, "{path}");
        client
    };
    let mut on_a = open("/chat/a", &tokens[2]);
    let mut on_b = open("/chat/b", &tokens[2]);
    let mut sender = open("/chat?channel=a&channel=b", &tokens[0]);
    let mut mute = open("/chat?channel=a&channel=b", &tokens[1]);
    sender.send_text("to a only");
    assert_eq!(on_a.expect_text(), "to a only");
    mute.send_text("nowhere");
    on_b.send_text("from b");
    // The sender shares both channels with `mute`: its first message is
    // b's, so "nowhere" was relayed to neither channel.
    assert_eq!(sender.expect_text(), "from b");
    assert_eq!(mute.expect_text(), "to a only", "mute listens on a");
    assert_eq!(mute.expect_text(), "from b");
    // Nor did "to a only" reach b, or "nowhere" a.
    on_b.expect_silence(Duration::from_millis(200));
    on_a.expect_silence(Duration::from_millis(200));
}

/// A relay grant for a later channel only: the channels before it that it
/// does not grant must not stop the relay.
#[test]
fn a_relay_grant_for_a_later_channel_is_honoured() {
    let keys = Keys::new();
    let server = chat_server(&keys);
    let relay = |relay: &[&str]| claims_with(&["*"], json!({ "relay": relay }));
    let tokens = keys.mint(&[
        Spec::new("HS256", "hs.secret", relay(&["b"])),
        Spec::new("HS256", "hs.secret", relay(&["*"])),
    ]);
    let open = |path: &str, token: &str| {
        let (response, client) = upgrade(&server, path, &bearer(token));
        assert_eq!(response.status, 101, "{path}");
        client
    };
    let mut on_a = open("/chat/a", &tokens[1]);
    let mut on_b = open("/chat/b", &tokens[1]);
    let mut sender = open("/chat?channel=a&channel=b", &tokens[0]);
    sender.send_text("to b only");
    assert_eq!(on_b.expect_text(), "to b only");
    on_a.expect_silence(Duration::from_millis(200));
}
