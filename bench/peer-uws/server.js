'use strict';
// wshub-bench-peer-uws: a uWebSockets.js server raced by wshub's benchmarks.
//
// Owns: the same endpoints as the fastwebsockets peer (bench/peer), so that
// loadgen drives all three servers unchanged:
//   /echo             WebSocket: every message comes back as it arrived
//                     (text stays text, binary stays binary);
//   /live/<channel>   WebSocket: subscribes to <channel>; a message the client
//                     sends is published to every OTHER subscriber (the
//                     sender is excluded, as in the peer and wshub);
//   POST /publish/<channel>
//                     the body goes to every subscriber (binary for
//                     application/octet-stream, text for text/* and
//                     application/json, 415 otherwise) and the answer is
//                     {"channel":"<name>","recipients":<N>}.
// Optionally a second, TLS listener (SSLApp) serves the same routes.
//
// Must never: listen off loopback, compress, time connections out, or drop
// a message for backpressure under the benchmark's loads (the limits below
// are set so it does not; a drop would show as a loss in loadgen's checks).
//
// Echo runs one JavaScript callback per message; publishing (app.publish,
// ws.publish) and the fan-out to subscribers run inside uWS's C++.

const uWS = require('@trufflesuite/uws-js-unofficial');
const { isUtf8 } = require('node:buffer');

const USAGE = `Usage: node server.js --listen 127.0.0.1:PORT [--tls-listen 127.0.0.1:PORT --cert FILE --key FILE]

  --listen ADDR       loopback address and port of the plain listener
  --tls-listen ADDR   loopback address and port of a wss:// / https:// listener
  --cert FILE         PEM certificate for --tls-listen
  --key FILE          PEM private key for --tls-listen

Endpoints: WebSocket /echo, WebSocket /live/<channel>, POST /publish/<channel>.`;

// Larger than any message the benchmarks send (16 KiB echo, 1 KiB broadcast).
const MAX_PAYLOAD = 1 << 20;
// Bytes a connection may have queued before uWS starts skipping messages for
// it: far above what a window of 16 small messages (or 16 echoes of 16 KiB)
// can queue, so the benchmarks never reach it.
const MAX_BACKPRESSURE = 64 * 1024 * 1024;

function fail(message) {
  process.stderr.write(`wshub-bench-peer-uws: ${message}\n\n${USAGE}\n`);
  process.exit(2);
}

/** "127.0.0.1:PORT" -> { host, port }, loopback IPv4 only. */
function loopbackAddr(text) {
  const m = /^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}):(\d{1,5})$/.exec(text || '');
  if (!m) fail(`${JSON.stringify(text)} is not a 127.x.y.z:PORT address`);
  const port = Number(m[2]);
  if (port < 1 || port > 65535) fail(`invalid port in ${text}`);
  return { host: m[1], port };
}

function parseArgs(argv) {
  const opts = { listen: null, tlsListen: null, cert: null, key: null };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) fail(`${arg} needs a value`);
      return argv[++i];
    };
    switch (arg) {
      case '-h':
      case '--help':
        process.stdout.write(`${USAGE}\n`);
        process.exit(0);
        break;
      case '--listen': opts.listen = loopbackAddr(value()); break;
      case '--tls-listen': opts.tlsListen = loopbackAddr(value()); break;
      case '--cert': opts.cert = value(); break;
      case '--key': opts.key = value(); break;
      default: fail(`unexpected argument ${JSON.stringify(arg)}`);
    }
  }
  if (!opts.listen) fail('--listen is required');
  if (opts.tlsListen && !(opts.cert && opts.key)) fail('--tls-listen needs --cert and --key');
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const apps = [uWS.App()];
if (opts.tlsListen) {
  apps.push(uWS.SSLApp({ cert_file_name: opts.cert, key_file_name: opts.key }));
}

/** Publishes to the subscribers of every listener; returns how many there are. */
function publishAll(channel, message, isBinary) {
  let recipients = 0;
  for (const app of apps) {
    recipients += app.numSubscribers(channel);
    app.publish(channel, message, isBinary, false);
  }
  return recipients;
}

// One string per channel name, shared by its subscribers' user data.
const channelNames = new Map();
function channelName(url, prefix) {
  const name = url.slice(prefix.length);
  let shared = channelNames.get(name);
  if (shared === undefined) {
    shared = name;
    channelNames.set(name, shared);
  }
  return shared;
}

const wsSettings = {
  compression: uWS.DISABLED,
  maxPayloadLength: MAX_PAYLOAD,
  maxBackpressure: MAX_BACKPRESSURE,
  closeOnBackpressureLimit: false,
  idleTimeout: 0,
  maxLifetime: 0,
  sendPingsAutomatically: false,
};

let dropped = 0;
function noteDrop(status) {
  // 2: uWS skipped the message because of maxBackpressure.
  if (status === 2 && dropped++ === 0) {
    process.stderr.write('backpressure limit reached: messages dropped\n');
  }
}

function plain(res, status, text) {
  res.cork(() => {
    res.writeStatus(status).writeHeader('Content-Type', 'text/plain').end(text);
  });
}

function route(app) {
  const others = apps.filter((a) => a !== app);

  app.ws('/echo', {
    ...wsSettings,
    message: (ws, message, isBinary) => {
      noteDrop(ws.send(message, isBinary, false));
    },
  });

  app.ws('/live/*', {
    ...wsSettings,
    upgrade: (res, req, context) => {
      const channel = channelName(req.getUrl(), '/live/');
      if (channel.length === 0) {
        plain(res, '404 Not Found', 'not found\n');
        return;
      }
      res.upgrade(
        { channel },
        req.getHeader('sec-websocket-key'),
        req.getHeader('sec-websocket-protocol'),
        req.getHeader('sec-websocket-extensions'),
        context,
      );
    },
    // Subscribed before any message can be published to it: open runs as
    // the 101 response goes out, before the client can have seen it.
    open: (ws) => {
      ws.subscribe(ws.getUserData().channel);
    },
    // Relayed to every other subscriber: ws.publish skips the sender.
    message: (ws, message, isBinary) => {
      const { channel } = ws.getUserData();
      ws.publish(channel, message, isBinary, false);
      for (const other of others) other.publish(channel, message, isBinary, false);
    },
  });

  app.post('/publish/*', (res, req) => {
    const channel = req.getUrl().slice('/publish/'.length);
    const type = req.getHeader('content-type');
    let isBinary;
    if (type === 'application/octet-stream') {
      isBinary = true;
    } else if (type.startsWith('text/') || type.startsWith('application/json')) {
      isBinary = false;
    } else {
      plain(res, '415 Unsupported Media Type',
        'use application/octet-stream, text/* or application/json\n');
      return;
    }
    if (channel.length === 0) {
      plain(res, '404 Not Found', 'not found\n');
      return;
    }
    let aborted = false;
    res.onAborted(() => {
      aborted = true;
    });
    const parts = [];
    res.onData((chunk, isLast) => {
      if (!isLast) {
        // The chunk's memory is reused after this call: copy it.
        parts.push(Buffer.from(new Uint8Array(chunk)));
        return;
      }
      if (aborted) return;
      // A body in one chunk is published straight from uWS's buffer.
      let body = chunk;
      if (parts.length > 0) {
        parts.push(Buffer.from(new Uint8Array(chunk)));
        body = Buffer.concat(parts);
      }
      if (!isBinary && !isUtf8(body)) {
        plain(res, '400 Bad Request', 'text body is not UTF-8\n');
        return;
      }
      const recipients = publishAll(channel, body, isBinary);
      res.cork(() => {
        res.writeStatus('200 OK')
          .writeHeader('Content-Type', 'application/json')
          .end(`{"channel":${JSON.stringify(channel)},"recipients":${recipients}}`);
      });
    });
  });

  app.any('/*', (res) => {
    plain(res, '404 Not Found', 'not found\n');
  });
}

for (const app of apps) route(app);

function listen(app, { host, port }, scheme) {
  app.listen(host, port, (socket) => {
    if (!socket) {
      process.stderr.write(`wshub-bench-peer-uws: cannot listen on ${host}:${port} (${scheme})\n`);
      process.exit(1);
    }
    process.stdout.write(`listening on ${scheme}://${host}:${port}\n`);
  });
}

listen(apps[0], opts.listen, 'ws');
if (opts.tlsListen) listen(apps[1], opts.tlsListen, 'wss');
