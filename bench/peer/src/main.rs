//! `wshub-bench-peer`: the race opponent for wshub's benchmarks.
//!
//! A small WebSocket server built the way a tokio + hyper + fastwebsockets
//! service is normally built, serving the same endpoints as wshub's benchmark
//! config so that `loadgen` can drive both unchanged:
//!
//! - `/echo` (WebSocket): every text/binary message comes back with its opcode.
//! - `/live/<channel>` (WebSocket): subscribe to a channel; messages the
//!   subscriber sends go to every OTHER subscriber of that channel.
//! - `POST /publish/<channel>`: send the body to all subscribers and answer
//!   `{"channel":"<name>","recipients":<N>}`.
//!
//! Design, chosen to be the natural efficient one for this stack rather than
//! a strawman:
//! - one `current_thread` tokio runtime (wshub is single-threaded too);
//! - hyper 1 serves HTTP/1.1 (keep-alive, pipelining) and hands upgraded
//!   connections to fastwebsockets;
//! - echo follows fastwebsockets' own benchmark server: one task per
//!   connection, `read_frame` then `write_frame`;
//! - each channel is a `tokio::sync::broadcast` channel: a publish is one
//!   `send` that clones a reference-counted `Bytes` per subscriber; every
//!   subscriber drains what is queued for it, encodes the frames with
//!   fastwebsockets' write path into a per-connection buffer and writes them
//!   with one syscall per batch.
//!
//! It listens on loopback addresses only.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{
    FragmentCollector, FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError,
    WebSocketRead, WebSocketWrite, upgrade,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};

const USAGE: &str = "\
Usage: wshub-bench-peer [--listen ADDR]

  --listen ADDR   loopback address and port to listen on (default 127.0.0.1:9001)

Endpoints: WebSocket /echo, WebSocket /live/<channel>, POST /publish/<channel>.";

/// Messages a channel holds for its slowest subscriber before that
/// subscriber starts losing them (tokio's broadcast semantics). The load
/// generator keeps at most a small window in flight, so this is never
/// reached by a server that keeps up; losses would show in its report.
const CHANNEL_CAPACITY: usize = 4096;
/// Queued messages encoded per subscriber before its buffer is flushed, so a
/// long backlog is written in bounded chunks.
const MAX_BATCH: usize = 256;
/// Pending output above which the coalescing writer flushes before taking
/// more, bounding the buffer of a connection that has a burst queued.
const FLUSH_AT: usize = 64 * 1024;
/// Buffer capacity kept after a flush; anything larger is released so a
/// burst does not pin memory to a connection that goes idle again.
const KEEP_CAPACITY: usize = 4 * 1024;
/// Pause before accepting again when out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

type Io = TokioIo<Upgraded>;
type Body = Full<Bytes>;

/// A message on its way to a channel's subscribers.
#[derive(Clone)]
struct Msg {
    /// Connection id of the subscriber that sent it (0 for HTTP publishes),
    /// so that subscriber can skip it.
    from: u64,
    opcode: OpCode,
    payload: Bytes,
}

/// Channel name → sender. Channels are created by their first subscriber
/// and removed when the last one leaves.
#[derive(Clone, Default)]
struct Hub {
    channels: Arc<Mutex<HashMap<String, broadcast::Sender<Msg>>>>,
}

impl Hub {
    fn subscribe(&self, channel: &str) -> (broadcast::Sender<Msg>, broadcast::Receiver<Msg>) {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let sender = channels
            .entry(channel.to_owned())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0);
        (sender.clone(), sender.subscribe())
    }

    /// Sends to every current subscriber; returns how many there are.
    fn publish(&self, channel: &str, msg: Msg) -> usize {
        let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        match channels.get(channel) {
            // `send` fails only when nobody is subscribed.
            Some(sender) => sender.send(msg).unwrap_or(0),
            None => 0,
        }
    }

    /// Forgets a channel once its last subscriber has dropped its receiver.
    fn leave(&self, channel: &str) {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if channels
            .get(channel)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            channels.remove(channel);
        }
    }
}

/// Ids for WebSocket connections; 0 is reserved for HTTP publishers.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

fn main() -> ExitCode {
    let addr = match parse_args(std::env::args().skip(1)) {
        Ok(Some(addr)) => addr,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("wshub-bench-peer: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("wshub-bench-peer: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wshub-bench-peer: {e}");
            ExitCode::from(1)
        }
    }
}

/// Returns the listen address, or `None` when help was asked for.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<SocketAddr>, String> {
    let mut addr: SocketAddr = ([127, 0, 0, 1], 9001).into();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => {
                let value = args.next().ok_or("--listen needs an address")?;
                addr = value
                    .parse()
                    .map_err(|_| format!("invalid address {value:?}: expected IP:PORT"))?;
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    if !addr.ip().is_loopback() {
        return Err(format!("{addr} is not a loopback address"));
    }
    Ok(Some(addr))
}

async fn serve(addr: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let hub = Hub::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or a connection reset before accept:
                // keep serving the connections we have.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Small frames must not wait for Nagle; wshub sets this too.
        let _ = stream.set_nodelay(true);
        let hub = hub.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, hub.clone()));
            let conn = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            // Clients vanishing mid-request are normal under load.
            let _ = conn.await;
        });
    }
}

async fn handle(req: Request<Incoming>, hub: Hub) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let response = if path == "/echo" {
        accept_websocket(req, |ws| async move {
            tokio::task::unconstrained(echo(ws)).await
        })
    } else if let Some(channel) = channel_name(&path, "/live/") {
        // Subscribe before answering, so a message published after the client
        // saw the 101 response is guaranteed to reach it.
        let (sender, receiver) = hub.subscribe(channel);
        let channel = channel.to_owned();
        let hub_for_conn = hub.clone();
        let response = accept_websocket(req, move |ws| async move {
            let result = subscriber(ws, sender, receiver).await;
            hub_for_conn.leave(&channel);
            result
        });
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            // The receiver was dropped with the rejected request.
            hub.leave(&path["/live/".len()..]);
        }
        response
    } else if let Some(channel) = channel_name(&path, "/publish/") {
        if req.method() == Method::POST {
            publish(req, &hub, channel).await
        } else {
            plain(StatusCode::METHOD_NOT_ALLOWED, "use POST\n")
        }
    } else {
        plain(StatusCode::NOT_FOUND, "not found\n")
    };
    Ok(response)
}

/// The channel named after `prefix`, if the path has one.
fn channel_name<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix).filter(|name| !name.is_empty())
}

/// Answers an upgrade request and runs `serve` on the connection once the
/// 101 response has gone out.
fn accept_websocket<F, Fut>(mut req: Request<Incoming>, serve: F) -> Response<Body>
where
    F: FnOnce(fastwebsockets::WebSocket<Io>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), WebSocketError>> + Send,
{
    if !upgrade::is_upgrade_request(&req) {
        return plain(StatusCode::UPGRADE_REQUIRED, "WebSocket upgrade required\n");
    }
    let (response, upgraded) = match upgrade::upgrade(&mut req) {
        Ok(parts) => parts,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    };
    tokio::spawn(async move {
        match upgraded.await {
            // Disconnects and protocol errors end one connection; the
            // benchmark's own checks catch anything that matters.
            Ok(ws) => {
                let _ = serve(ws).await;
            }
            Err(e) => eprintln!("upgrade failed: {e}"),
        }
    });
    response.map(|_| Full::new(Bytes::new()))
}

/// fastwebsockets' canonical echo loop.
async fn echo(ws: fastwebsockets::WebSocket<Io>) -> Result<(), WebSocketError> {
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

type SubscriberWrite = WebSocketWrite<Coalesce<WriteHalf<Io>>>;

/// One subscriber: the read side relays what the client sends, the write
/// side forwards channel messages. Both run in the connection's one task.
async fn subscriber(
    ws: fastwebsockets::WebSocket<Io>,
    sender: broadcast::Sender<Msg>,
    receiver: broadcast::Receiver<Msg>,
) -> Result<(), WebSocketError> {
    let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    let (read, write) = ws.split(|io| {
        let (read, write) = tokio::io::split(io);
        (read, Coalesce::new(write))
    });
    // Pongs and close replies the read side owes go through the write side,
    // which owns the socket's write half.
    let (control_tx, control_rx) = mpsc::channel(4);
    let (read_result, write_result) = tokio::join!(
        read_side(read, control_tx, sender, id),
        write_side(write, receiver, control_rx, id)
    );
    read_result.and(write_result)
}

async fn read_side(
    read: WebSocketRead<ReadHalf<Io>>,
    control: mpsc::Sender<Frame<'static>>,
    sender: broadcast::Sender<Msg>,
    id: u64,
) -> Result<(), WebSocketError> {
    let mut read = FragmentCollectorRead::new(read);
    // `control` is dropped on return, which tells the write side to stop.
    let mut owe = |frame: Frame<'_>| {
        let owned = Frame::new(
            true,
            frame.opcode,
            None,
            Payload::Owned(frame.payload.to_vec()),
        );
        let control = control.clone();
        async move {
            control
                .send(owned)
                .await
                .map_err(|_| io::Error::other("connection writer stopped"))
        }
    };
    loop {
        let frame = read.read_frame(&mut owe).await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => {
                // Nobody else subscribed is not an error for the sender.
                let _ = sender.send(Msg {
                    from: id,
                    opcode: frame.opcode,
                    payload: Bytes::copy_from_slice(&frame.payload),
                });
            }
            _ => {}
        }
    }
}

async fn write_side(
    mut write: SubscriberWrite,
    mut receiver: broadcast::Receiver<Msg>,
    mut control: mpsc::Receiver<Frame<'static>>,
    id: u64,
) -> Result<(), WebSocketError> {
    loop {
        tokio::select! {
            biased;
            owed = control.recv() => {
                let Some(frame) = owed else { return Ok(()) };
                let closing = frame.opcode == OpCode::Close;
                write.write_frame(frame).await?;
                write.flush().await?;
                if closing {
                    return Ok(());
                }
            }
            first = receiver.recv() => {
                let mut next = Some(first);
                let mut taken = 0;
                while let Some(result) = next {
                    match result {
                        Ok(msg) if msg.from == id => {}
                        Ok(msg) => {
                            let frame = Frame::new(true, msg.opcode, None, Payload::Borrowed(&msg.payload));
                            write.write_frame(frame).await?;
                        }
                        Err(RecvError::Lagged(missed)) => {
                            eprintln!("subscriber {id} fell behind: {missed} messages dropped");
                        }
                        Err(RecvError::Closed) => return write.flush().await,
                    }
                    taken += 1;
                    next = (taken < MAX_BATCH).then(|| match receiver.try_recv() {
                        Ok(msg) => Some(Ok(msg)),
                        Err(TryRecvError::Empty) => None,
                        Err(TryRecvError::Lagged(missed)) => Some(Err(RecvError::Lagged(missed))),
                        Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
                    }).flatten();
                }
                write.flush().await?;
            }
        }
    }
}

/// `POST /publish/<channel>`: the body goes to every subscriber.
async fn publish(req: Request<Incoming>, hub: &Hub, channel: &str) -> Response<Body> {
    let opcode = match req.headers().get(CONTENT_TYPE).map(HeaderValue::as_bytes) {
        Some(b"application/octet-stream") => OpCode::Binary,
        Some(t) if t.starts_with(b"text/") || t.starts_with(b"application/json") => OpCode::Text,
        _ => {
            return plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "use application/octet-stream, text/* or application/json\n",
            );
        }
    };
    let payload = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    };
    if opcode == OpCode::Text && std::str::from_utf8(&payload).is_err() {
        return plain(StatusCode::BAD_REQUEST, "text body is not UTF-8\n");
    }
    let recipients = hub.publish(
        channel,
        Msg {
            from: 0,
            opcode,
            payload,
        },
    );
    let body = format!(
        "{{\"channel\":\"{}\",\"recipients\":{recipients}}}",
        json_escape(channel)
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(text.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn json_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Collects writes in memory until flushed, so a batch of frames leaves in
/// one syscall. Works like `tokio::io::BufWriter`, except that it allocates
/// only when there is something to write and gives large buffers back after
/// a flush: an idle subscriber costs no buffer at all.
struct Coalesce<W> {
    inner: W,
    buf: Vec<u8>,
    written: usize,
}

impl<W: AsyncWrite + Unpin> Coalesce<W> {
    fn new(inner: W) -> Self {
        Coalesce {
            inner,
            buf: Vec::new(),
            written: 0,
        }
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.written = 0;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Coalesce<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() + data.len() > FLUSH_AT {
            ready!(this.poll_drain(cx))?;
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
