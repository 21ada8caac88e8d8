//! wss:// against TLS stacks other than rustls, all speaking to wshub's
//! own record layer once the handshake is done: Python's `websockets` over
//! OpenSSL, headless Chromium (BoringSSL), and `openssl s_client` sending
//! TLS 1.3 key updates, with and without asking for ours.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use wshub::config::ClientMessages;

use crate::support::browser::run_browser_script;
use crate::support::python::run_websockets_client;
use crate::support::server::broadcast_config;
use crate::support::tempdir::TempDir;
use crate::support::tls::{DualServer, SERVER_NAME};

/// Echo of every frame-length class and of 500 pipelined messages, then a
/// channel relayed between two connections, and clean closes, over TLS 1.3
/// and TLS 1.2.
#[test]
fn python_websockets_over_openssl() {
    let server = DualServer::start(broadcast_config(ClientMessages::Broadcast, false));
    let dir = TempDir::new("tls-clients");
    let (cert, _) = server.identity.write_to(&dir);
    let script = r#"
import asyncio, json, ssl, sys
from websockets.asyncio.client import connect
url, cafile, name = sys.argv[1], sys.argv[2], sys.argv[3]
async def run(version):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ctx.maximum_version = version
    kw = dict(ssl=ctx, server_hostname=name, compression=None, max_size=None)
    async with connect(url + "/echo", **kw) as ws:
        agreed = ws.transport.get_extra_info("ssl_object").version()
        for n in [0, 1, 125, 126, 65535, 65536, 300000]:
            payload = bytes(i % 251 for i in range(n))
            await ws.send(payload)
            assert await asyncio.wait_for(ws.recv(), 10) == payload, n
        for i in range(500):
            await ws.send(f"m{i}")
        for i in range(500):
            assert await asyncio.wait_for(ws.recv(), 10) == f"m{i}"
    async with connect(url + "/live/news", **kw) as a, connect(url + "/live/news", **kw) as b:
        for i in range(100):
            await a.send(f"n{i}")
        for i in range(100):
            assert await asyncio.wait_for(b.recv(), 10) == f"n{i}"
    return agreed
async def main():
    print(json.dumps([await run(ssl.TLSVersion.TLSv1_3), await run(ssl.TLSVersion.TLSv1_2)]))
asyncio.run(main())
"#;
    let url = format!("wss://{}", server.tls);
    let out = run_websockets_client(script, &[&url, cert.to_str().unwrap(), SERVER_NAME]);
    assert_eq!(out.trim(), r#"["TLSv1.3", "TLSv1.2"]"#);
}

/// A real browser: echo of every frame-length class and of 300 pipelined
/// messages, a channel relayed between two of its connections, and a close
/// the browser calls clean.
#[test]
fn chromium_over_wss() {
    let server = DualServer::start(broadcast_config(ClientMessages::Broadcast, false));
    let script = r##"
port, plain = sys.argv[2], sys.argv[3]
JS = """
async (port) => {
  const open = (path) => new Promise((ok, fail) => {
    const ws = new WebSocket(`wss://127.0.0.1:${port}${path}`);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => ok(ws);
    ws.onerror = () => fail(new Error("cannot open " + path));
  });
  const collect = (ws, count) => new Promise((ok, fail) => {
    const got = [];
    ws.onmessage = (e) => { got.push(e.data); if (got.length === count) ok(got); };
    ws.onclose = (e) => fail(new Error("closed " + e.code));
  });
  const echo = await open("/echo");
  for (const n of [0, 1, 125, 126, 65535, 65536, 300000]) {
    const sent = new Uint8Array(n);
    for (let i = 0; i < n; i++) sent[i] = i % 251;
    const reply = collect(echo, 1);
    echo.send(sent);
    const got = new Uint8Array((await reply)[0]);
    if (got.length !== n || got.some((b, i) => b !== i % 251)) throw new Error("echo of " + n);
  }
  const texts = collect(echo, 300);
  for (let i = 0; i < 300; i++) echo.send("m" + i);
  const echoed = await texts;
  if (echoed.some((t, i) => t !== "m" + i)) throw new Error("pipelined echo");
  const a = await open("/live/news"), b = await open("/live/news");
  const relayed = collect(b, 100);
  for (let i = 0; i < 100; i++) a.send("n" + i);
  if ((await relayed).some((t, i) => t !== "n" + i)) throw new Error("relay order");
  const closed = new Promise((ok) => { echo.onclose = (e) => ok([e.code, e.wasClean]); });
  echo.close(1000, "done");
  return [echoed.length, ...(await closed)];
}
"""
with sync_playwright() as p:
    # The test's certificate is its own; only it is served here.
    browser = launch(p, "--ignore-certificate-errors")
    page = browser.new_page()
    # A loopback page: one of another origin may not reach loopback
    # addresses (Chromium's local network access checks).
    page.goto(f"http://127.0.0.1:{plain}/healthz")
    print(json.dumps(page.evaluate(JS, port)))
    browser.close()
"##;
    let ports = [
        server.tls.port().to_string(),
        server.plain.port().to_string(),
    ];
    let out = run_browser_script(script, &[&ports[0], &ports[1]]);
    assert_eq!(out.trim(), "[300, 1000, true]");
}

/// OpenSSL's client updates its keys on command: `K` asks for ours too,
/// `k` does not. Each request after an update is read under the client's
/// new key, and each answer must be sealed under the key the client then
/// expects, so a mistake on either side fails the exchange.
#[test]
fn openssl_key_updates_with_and_without_a_request() {
    let server = DualServer::start(broadcast_config(ClientMessages::Broadcast, false));
    let dir = TempDir::new("tls-clients");
    let (cert, _) = server.identity.write_to(&dir);
    let mut child = Command::new("openssl")
        .args(["s_client", "-tls1_3", "-verify_return_error", "-servername"])
        .arg(SERVER_NAME)
        .arg("-CAfile")
        .arg(&cert)
        .arg("-connect")
        .arg(server.tls.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl must be installed to run this test");
    let seen = Arc::new(Mutex::new(String::new()));
    let mut readers = Vec::new();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let seen = Arc::clone(&seen);
        readers.push(thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut seen = seen.lock().unwrap();
                seen.push_str(&line);
                seen.push('\n');
            }
        }));
    }
    let answers = |seen: &Mutex<String>| seen.lock().unwrap().matches("HTTP/1.1 200").count();
    let wait_for = |count: usize| {
        let started = Instant::now();
        while answers(&seen) < count {
            let text = seen.lock().unwrap().clone();
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "waited for answer {count}:\n{text}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    let request = "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    stdin.write_all(request.as_bytes()).unwrap();
    stdin.flush().unwrap();
    wait_for(1);
    for (n, command) in ["K\n", "k\n", "K\n", "K\n"].into_iter().enumerate() {
        // Each command is read on its own, then the next request.
        stdin.write_all(command.as_bytes()).unwrap();
        stdin.flush().unwrap();
        thread::sleep(Duration::from_millis(200));
        stdin.write_all(request.as_bytes()).unwrap();
        stdin.flush().unwrap();
        wait_for(n + 2);
    }
    stdin.write_all(b"Q\n").unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    for reader in readers {
        reader.join().unwrap();
    }
    let text = seen.lock().unwrap().clone();
    assert_eq!(text.matches("KEYUPDATE").count(), 4, "{text}");
    assert!(!text.to_lowercase().contains("alert"), "{text}");
    assert!(status.success(), "{status}:\n{text}");
}
