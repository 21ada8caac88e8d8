//! A real browser against the real server: headless Chromium runs the watch
//! page and plain pages of made-up origins (see `support::browser`).

use wshub::config::{Config, RouteKind};

use crate::support::browser::run_browser_script;
use crate::support::server::TestServer;

/// The embedded config (what `cargo run --release` serves) on a free port,
/// with history kept on `/live` so that messages carry positions.
fn embedded_with_history() -> Config {
    let mut config = Config::embedded();
    config.listeners[0].address = "127.0.0.1:0".parse().unwrap();
    for route in &mut config.routes {
        if route.kind == RouteKind::Broadcast {
            route.history_size = 100;
        }
    }
    config
}

/// The watch page subscribes over WebSocket, shows what is published over
/// HTTP (text and JSON) with its position, and publishes from its own form.
#[test]
fn the_watch_page_shows_messages_published_over_http_and_its_own() {
    let server = TestServer::with_config(embedded_with_history());
    let script = r##"
import urllib.request
port = sys.argv[2]
def publish(body, kind):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/publish/news", data=body.encode(),
                                     headers={"Content-Type": kind}, method="POST")
    urllib.request.urlopen(request, timeout=5).read()
with sync_playwright() as p:
    browser = launch(p)
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{port}/?channel=news&transport=ws")
    wait_for(page, "document.body.dataset.state === 'open'", "the WebSocket to open")
    publish("first", "text/plain")
    publish('{"n":2}', "application/json")
    wait_for(page, "document.querySelectorAll('li[data-message]').length >= 2", "two messages")
    page.fill("input[name=payload]", "from the page")
    page.click("#publish button")
    wait_for(page, "document.querySelectorAll('li[data-message]').length >= 3", "the page's own message")
    rows = page.eval_on_selector_all("li[data-message]",
        "rows => rows.map(r => [r.querySelector('.pos').textContent, r.dataset.message])")
    rows.reverse()
    print(json.dumps({"rows": rows, "published": page.inner_text("#published")}))
    browser.close()
"##;
    let out = run_browser_script(script, &[&server.addr.port().to_string()]);
    let seen: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let rows = seen["rows"].as_array().unwrap();
    let messages: Vec<&str> = rows.iter().map(|r| r[1].as_str().unwrap()).collect();
    assert_eq!(messages, ["first", "{\n \"n\": 2\n}", "from the page"]);
    let positions: Vec<&str> = rows.iter().map(|r| r[0].as_str().unwrap()).collect();
    for (i, position) in positions.iter().enumerate() {
        assert!(
            position.ends_with(&format!("#{}", i + 1)),
            "offsets 1, 2, 3 in order: {positions:?}"
        );
    }
    assert!(
        seen["published"].as_str().unwrap().starts_with("sent:"),
        "{seen}"
    );
}

/// The same over Server-Sent Events: the page's `EventSource` gets text,
/// JSON and binary messages with their positions (the event ids).
#[test]
fn the_watch_page_follows_a_channel_over_server_sent_events() {
    let server = TestServer::with_config(embedded_with_history());
    let script = r##"
import urllib.request
port = sys.argv[2]
def publish(body, kind):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/publish/news", data=body,
                                     headers={"Content-Type": kind}, method="POST")
    urllib.request.urlopen(request, timeout=5).read()
with sync_playwright() as p:
    browser = launch(p)
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{port}/?channel=news&transport=sse")
    wait_for(page, "document.body.dataset.state === 'open'", "the event stream to open")
    publish(b"one\ntwo", "text/plain")
    publish(b'{"n":2}', "application/json")
    publish(bytes([0, 1, 2, 255]), "application/octet-stream")
    wait_for(page, "document.querySelectorAll('li[data-message]').length >= 3", "three events")
    rows = page.eval_on_selector_all("li[data-message]",
        "rows => rows.map(r => [r.querySelector('.pos').textContent, r.dataset.message])")
    rows.reverse()
    print(json.dumps(rows))
    browser.close()
"##;
    let out = run_browser_script(script, &[&server.addr.port().to_string()]);
    let rows: Vec<(String, String)> = serde_json::from_str(out.trim()).unwrap();
    let messages: Vec<&str> = rows.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(
        messages,
        ["one\ntwo", "{\"n\":2}", "binary, 4 B: 00 01 02 ff"]
    );
    for (i, (position, _)) in rows.iter().enumerate() {
        assert!(
            position.ends_with(&format!("#{}", i + 1)),
            "offsets 1, 2, 3 in order: {rows:?}"
        );
    }
}

/// `allowed_origins` holds for a real browser: the watch page served from
/// the allowed origin (`http://127.0.0.1:<port>`) connects; the same page
/// loaded as `http://localhost:<port>`, another origin, is refused at the
/// handshake and keeps retrying.
#[test]
fn a_page_of_a_disallowed_origin_is_refused() {
    // The origin names the port, so the port is chosen before the server
    // starts (free a moment ago; nothing else here binds 127.0.0.1 ports
    // by number).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = embedded_with_history();
    config.listeners[0].address = format!("127.0.0.1:{port}").parse().unwrap();
    config.allowed_origins = vec![format!("http://127.0.0.1:{port}")];
    let server = TestServer::with_config(config);
    let script = r##"
port = sys.argv[2]
results = {}
with sync_playwright() as p:
    browser = launch(p)
    for host in ["127.0.0.1", "localhost"]:
        page = browser.new_page()
        page.goto(f"http://{host}:{port}/?channel=news&transport=ws")
        # Read in the same step as the check: a refused page retries soon after.
        settled = """(() => { const s = document.getElementById('state').textContent;
            return s === 'open' || s.includes('closed') ? s : null; })()"""
        results[host] = wait_for(page, settled, "the socket to open or be refused at " + host)
    browser.close()
print(json.dumps(results))
"##;
    let out = run_browser_script(script, &[&server.addr.port().to_string()]);
    let results: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(results["127.0.0.1"], "open");
    // A browser reports a refused handshake as an abnormal close (1006).
    let refused = results["localhost"].as_str().unwrap();
    assert!(refused.starts_with("closed (1006)"), "{refused}");
}
