//! A real browser across a restart: the watch page's `EventSource` on a
//! cluster node that is restarted (SIGTERM, then the same binary and config
//! again) reconnects by itself and resumes with `Last-Event-ID`, so every
//! message published meanwhile on another node still reaches it, once and
//! in order. History lives in Redis, so the restarted node can serve it.

use std::net::TcpListener;
use std::time::Duration;

use super::support::browser::run_browser_script;
use super::support::daemon::{BIN, Daemon};
use super::support::redis::Redis;
use super::support::server::{LIVE_PATH, TestServer};
use super::support::tempdir::TempDir;
use super::{alone, node_config, wait_healthy};

#[test]
fn an_event_source_resumes_across_a_node_restart_without_losing_a_message() {
    let _alone = alone();
    let redis = Redis::start();
    // The publishing node, which stays up.
    let mut config = node_config(&redis);
    for route in &mut config.routes {
        if route.path == LIVE_PATH {
            route.history_size = 1_000;
        }
    }
    let publisher = TestServer::with_config(config);
    wait_healthy(&publisher, Duration::from_secs(5));
    // The restarted node listens on the same port both times.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = TempDir::new("restarted-node");
    let file = dir.write(
        "wshub.toml",
        &format!(
            "page = true\nshutdown_close_code = 1012\nshutdown_timeout = \"2s\"\n\n\
             [cluster]\nredis_url = \"{}\"\n\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n\n\
             [[route]]\npath = \"/live\"\nkind = \"broadcast\"\nhistory_size = 1000\n",
            redis.url()
        ),
    );
    let mut node = Daemon::start(&file, &[]);
    node.listening_address();
    let script = r##"
import os, signal, subprocess, urllib.request
port, publish_port, pid, binary, config = sys.argv[2:7]
def publish(body):
    request = urllib.request.Request(f"http://127.0.0.1:{publish_port}/publish/news", data=body.encode(),
                                     headers={"Content-Type": "text/plain"}, method="POST")
    urllib.request.urlopen(request, timeout=5).read()
def rows(page):
    return page.evaluate("document.querySelectorAll('li[data-message]').length")
def exited(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return True
restarted = None
notes = []
try:
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/?channel=news&transport=sse")
        wait_for(page, "document.body.dataset.state === 'open'", "the event stream to open")
        for i in range(1, 4):
            publish(f"m{i}")
        wait_for(page, "document.querySelectorAll('li[data-message]').length >= 3", "m1..m3")
        os.kill(int(pid), signal.SIGTERM)
        wait_for(page, "document.body.dataset.state !== 'open'", "the stream to end")
        notes.append(page.inner_text("li .note"))
        deadline = time.monotonic() + 10
        while not exited(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Published while the node is down: kept in Redis.
        for i in range(4, 7):
            publish(f"m{i}")
        restarted = subprocess.Popen([binary, "--config", config], stderr=subprocess.DEVNULL)
        wait_for(page, "document.querySelectorAll('li[data-message]').length >= 6", "m4..m6 after the restart", 20)
        publish("m7")
        wait_for(page, "document.querySelectorAll('li[data-message]').length >= 7", "m7 live")
        time.sleep(0.3)
        seen = page.eval_on_selector_all("li[data-message]",
            "rows => rows.map(r => [r.querySelector('.pos').textContent, r.dataset.message])")
        seen.reverse()
        print(json.dumps({"rows": seen, "notes": notes}))
        browser.close()
finally:
    if restarted is not None:
        restarted.kill()
        restarted.wait()
"##;
    let pid = node.pid().as_raw_nonzero().to_string();
    let out = run_browser_script(
        script,
        &[
            &port.to_string(),
            &publisher.addr.port().to_string(),
            &pid,
            BIN,
            file.to_str().unwrap(),
        ],
    );
    node.wait_exit(Duration::from_secs(10));
    let seen: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let rows = seen["rows"].as_array().unwrap();
    let messages: Vec<&str> = rows.iter().map(|r| r[1].as_str().unwrap()).collect();
    assert_eq!(messages, ["m1", "m2", "m3", "m4", "m5", "m6", "m7"]);
    for (i, row) in rows.iter().enumerate() {
        let position = row[0].as_str().unwrap();
        assert!(
            position.ends_with(&format!("#{}", i + 1)),
            "offsets 1..7 in order: {rows:?}"
        );
    }
    assert!(
        seen["notes"][0]
            .as_str()
            .is_some_and(|note| note.starts_with("server restarting")),
        "the page saw the shutdown event: {seen}"
    );
}
