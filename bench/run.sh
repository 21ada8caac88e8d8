#!/usr/bin/env bash
# Runs wshub's standard benchmark set against wshub, a fastwebsockets
# server (bench/peer) and a uWebSockets.js server (bench/peer-uws), then
# writes bench/results.md and prints it. See bench/README.md for what each
# scenario measures.
#
# Environment knobs:
#   QUICK=1           short smoke run: small sizes, 1 run each
#   RUNS=N            runs per scenario (default 3, QUICK: 1)
#   SERVERS="wshub peer uws"   which servers to run
#   ONLY=REGEX        only scenarios whose name matches (e.g. ONLY=echo)
#   SERVER_CPU=0 LOADGEN_CPU=1   cores to pin to (taskset -c)
#   RESULTS=FILE      where to write the Markdown (default bench/results.md)
#   WSHUB_BIN=FILE    run this wshub binary instead of the one built here
#                     (e.g. a copy built from an earlier commit, for before/after)
#   BC_M_W1_10K, BC_M_W16_10K, BC_M_W1_19K, BC_M_W16_19K
#                     messages per broadcast run (see the defaults below)
#   STALL_M=N         messages published during fanout-stall-* (default 40)
#   CLUSTER=0         skip the cluster scenarios (cl-*: wshub nodes on a
#                     redis-server that this script starts and stops)
#   CL_M_W1, CL_M_W16, CL_M_WS, CL_M_HOP   messages per cluster broadcast run
#
# Everything stays on loopback: servers listen on 127.0.0.1, and loadgen
# refuses any other target.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then RUNS=${RUNS:-1}; else RUNS=${RUNS:-3}; fi
SERVERS=${SERVERS:-"wshub peer uws"}
ONLY=${ONLY:-}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
RESULTS=${RESULTS:-$ROOT/bench/results.md}
# loadgen's own deadline per run; the wrapper below adds a margin.
LOADGEN_TIMEOUT=${LOADGEN_TIMEOUT:-120}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PEER_TARGET=$ROOT/target/bench-peer

if [[ $QUICK == 1 ]]; then
    ECHO_SECS=2
    SUBS_A=1000 SUBS_B=2000
    M_W1_A=${BC_M_W1_10K:-50} M_W16_A=${BC_M_W16_10K:-300}
    M_W1_B=${BC_M_W1_19K:-30} M_W16_B=${BC_M_W16_19K:-200}
    M_STALL=${STALL_M:-20}
    SUBS_C=1500 HOP_SUBS=100
    HIST_M=${HIST_M:-10000}
    M_CW1=${CL_M_W1:-30} M_CW16=${CL_M_W16:-100} M_CWS=${CL_M_WS:-200} M_HOP=${CL_M_HOP:-300}
else
    ECHO_SECS=10
    SUBS_A=10000 SUBS_B=19000
    # Sized so one run of the peer takes a few seconds on a 2-core VM; a
    # faster server just finishes sooner. Raise them on faster machines
    # for more latency samples.
    M_W1_A=${BC_M_W1_10K:-60} M_W16_A=${BC_M_W16_10K:-1000}
    M_W1_B=${BC_M_W1_19K:-40} M_W16_B=${BC_M_W16_19K:-600}
    # Messages published while the echo probe of fanout-stall-* runs.
    M_STALL=${STALL_M:-40}
    # Cluster rows: 18,000 subscribers (6,000 on each of three nodes), so
    # loadgen stays under 20,000 open files; the Redis hop at 100. Sized
    # like the rows above: a few seconds per run.
    SUBS_C=18000 HOP_SUBS=100
    # Messages kept in history for the memory figure of recover-*.
    HIST_M=${HIST_M:-100000}
    M_CW1=${CL_M_W1:-50} M_CW16=${CL_M_W16:-600} M_CWS=${CL_M_WS:-600} M_HOP=${CL_M_HOP:-2000}
fi
CLUSTER=${CLUSTER:-1}

log() { printf '%s\n' "$*" >&2; }

# --- Build -----------------------------------------------------------------

log "building release binaries ..."
cargo build --release --quiet -p wshub -p wshub-loadgen
cargo build --release --quiet --manifest-path bench/peer/Cargo.toml --target-dir "$PEER_TARGET"
WSHUB_BIN=${WSHUB_BIN:-$CARGO_TARGET_DIR/release/wshub}
LOADGEN_BIN=$CARGO_TARGET_DIR/release/loadgen
PEER_BIN=$PEER_TARGET/release/wshub-bench-peer

# The uWebSockets.js server: Node and the pinned npm package
# (bench/peer-uws/package-lock.json), installed into
# bench/peer-uws/node_modules when missing. When any of it is unavailable,
# the uws cells are n/a with the reason; the rest of the set still runs.
UWS_DIR=$ROOT/bench/peer-uws
UWS_ERROR= UWS_VERSION=
if [[ " $SERVERS " == *" uws "* ]]; then
    if ! command -v node >/dev/null; then
        UWS_ERROR="node is not installed (the uWebSockets.js peer runs on Node.js)"
    elif [[ ! -d $UWS_DIR/node_modules/@trufflesuite/uws-js-unofficial ]]; then
        if ! command -v npm >/dev/null; then
            UWS_ERROR="npm is not installed, so bench/peer-uws has no node_modules"
        else
            log "installing bench/peer-uws (npm ci) ..."
            npm_log=$(mktemp)
            if ! (cd "$UWS_DIR" && npm ci --omit=optional --ignore-scripts --no-audit --no-fund \
                    > "$npm_log" 2>&1); then
                UWS_ERROR="npm ci in bench/peer-uws failed: $(tail -c 300 "$npm_log" | tr '\n' ' ')"
            fi
            rm -f "$npm_log"
        fi
    fi
    if [[ -z $UWS_ERROR ]]; then
        # The package's native addon must load on this Node (its binaries
        # are built per Node ABI and platform).
        if uws_load=$(cd "$UWS_DIR" && node -e \
                "require('@trufflesuite/uws-js-unofficial').App()" 2>&1); then
            UWS_VERSION="uWebSockets.js $(cd "$UWS_DIR" && node -p "require('@trufflesuite/uws-js-unofficial/package.json').version") on Node $(node --version)"
        else
            UWS_ERROR="uWebSockets.js does not load on Node $(node --version): $(printf '%s' "$uws_load" | tr '\n' ' ' | cut -c1-200)"
        fi
    fi
    [[ -z $UWS_ERROR ]] || log "uws: $UWS_ERROR"
fi

# Both processes may hold up to the hard limit of open files.
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d)
SERVER_PID= SERVER_PING=
NODE_PIDS=() NODE_PORTS=() NODE_HEALTH=() REDIS_PID= REDIS_PORT= REUSE=0
cleanup() {
    stop_server
    stop_cluster
    rm -rf "$WORK"
}
trap cleanup EXIT

# A self-signed certificate for the wss:// scenarios (wshub and uws: the
# fastwebsockets peer does not serve TLS). loadgen trusts it through --ca.
TLS_CERT=$WORK/tls-cert.pem TLS_KEY=$WORK/tls-key.pem
TLS_ERROR=
if ! command -v openssl >/dev/null; then
    TLS_ERROR="openssl is not installed, so no certificate for the wss:// scenarios"
else
    # An end-entity certificate (CA:FALSE: rustls refuses a CA certificate
    # as the server's own), for the addresses loadgen connects to.
    printf '%s\n' '[req]' 'distinguished_name = dn' 'x509_extensions = ext' 'prompt = no' \
        '[dn]' 'CN = localhost' '[ext]' 'basicConstraints = critical,CA:FALSE' \
        'subjectAltName = IP:127.0.0.1,DNS:localhost' 'keyUsage = critical,digitalSignature' \
        'extendedKeyUsage = serverAuth' > "$WORK/tls-req.cnf"
fi
if [[ -z $TLS_ERROR ]] && ! openssl req -x509 -config "$WORK/tls-req.cnf" -newkey ec \
        -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -keyout "$TLS_KEY" -out "$TLS_CERT" > "$WORK/openssl.log" 2>&1; then
    TLS_ERROR="openssl could not make a certificate: $(tr '\n' ' ' < "$WORK/openssl.log" | cut -c1-200)"
fi
[[ -z $TLS_ERROR ]] || log "$TLS_ERROR"

PIN_SERVER=() PIN_LOADGEN=()
if command -v taskset >/dev/null && (( $(nproc) >= 2 )); then
    PIN_SERVER=(taskset -c "$SERVER_CPU")
    PIN_LOADGEN=(taskset -c "$LOADGEN_CPU")
    PINNING="server on CPU $SERVER_CPU, loadgen on CPU $LOADGEN_CPU (taskset)"
else
    PINNING="not pinned (needs taskset and 2 CPUs)"
fi

# --- wshub configs -----------------------------------------------------------

# The full benchmark config, and an echo-only variant used for the echo
# scenarios when the full one is not accepted (a route kind still being
# built); the broadcast scenarios then report n/a with the reason.
write_config() { # template port out
    sed "s/^address = .*/address = \"127.0.0.1:$2\"/" "$1" > "$3"
}
awk '
    /^\[\[/ { flush(); in_block = 1 }
    { block = block $0 "\n" }
    END { flush() }
    function flush() {
        if (block !~ /kind = "broadcast"/) printf "%s", block
        block = ""
    }
' bench/wshub-bench.toml > "$WORK/echo-only.toml"
WSHUB_FULL_OK=1
WSHUB_CONFIG_ERROR=
if ! WSHUB_CONFIG_ERROR=$("$WSHUB_BIN" --check-config bench/wshub-bench.toml 2>&1); then
    WSHUB_FULL_OK=0
    WSHUB_CONFIG_ERROR=$(printf '%s' "$WSHUB_CONFIG_ERROR" | tr '\n' ' ' | tr -s ' ' | cut -c1-300)
    log "wshub rejects bench/wshub-bench.toml: $WSHUB_CONFIG_ERROR"
    log "echo scenarios will use the echo-only part of it"
fi

# --- Servers -----------------------------------------------------------------

# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"

# pick_tls_port: sets TLS_PORT to a free port other than PORT (for a second,
# wss:// listener), or leaves it empty when there is no certificate.
pick_tls_port() {
    TLS_PORT=
    [[ -z $TLS_ERROR ]] || return 0
    TLS_PORT=$(free_port) || return 1
    while [[ $TLS_PORT == "$PORT" ]]; do TLS_PORT=$(free_port) || return 1; done
}

# start_server SERVER KIND: starts it pinned on a free port and sets
# SERVER_PID and PORT (and TLS_PORT for a server with a wss:// listener);
# on failure sets START_ERROR and returns 1. (Not to be called in $(...):
# the server must be a child of this shell.)
start_server() {
    local server=$1 kind=$2 config
    START_ERROR=
    TLS_PORT=
    PORT=$(free_port) || { START_ERROR="no free port found"; return 1; }
    local out=$WORK/server.log
    case $server in
        wshub)
            if [[ $kind != echo && $WSHUB_FULL_OK == 0 ]]; then
                START_ERROR="wshub does not accept the broadcast route of bench/wshub-bench.toml yet (error quoted above)"
                return 1
            fi
            config=$WORK/wshub.toml
            if [[ $WSHUB_FULL_OK == 1 ]]; then
                write_config bench/wshub-bench.toml "$PORT" "$config"
            else
                write_config "$WORK/echo-only.toml" "$PORT" "$config"
            fi
            # Scenarios named *-ping run with keep-alive pings at the
            # default interval instead of the bench config's "0s".
            if [[ -n $SERVER_PING ]]; then
                sed -i "s/^ping_interval = .*/ping_interval = \"$SERVER_PING\"/" "$config"
            fi
            # A second, TLS listener (wss://) beside the plain one.
            pick_tls_port || { START_ERROR="no free port found"; return 1; }
            if [[ -n $TLS_PORT ]]; then
                printf '\n[[listener]]\naddress = "127.0.0.1:%s"\ntls = true\ncert = "%s"\nkey = "%s"\n' \
                    "$TLS_PORT" "$TLS_CERT" "$TLS_KEY" >> "$config"
            fi
            # Per-connection info logs would cost the server time the peer
            # does not spend.
            RUST_LOG=warn "${PIN_SERVER[@]}" "$WSHUB_BIN" --config "$config" > "$out" 2>&1 &
            ;;
        peer)
            "${PIN_SERVER[@]}" "$PEER_BIN" --listen "127.0.0.1:$PORT" > "$out" 2>&1 &
            ;;
        uws)
            if [[ -n $UWS_ERROR ]]; then
                START_ERROR=$UWS_ERROR
                return 1
            fi
            pick_tls_port || { START_ERROR="no free port found"; return 1; }
            local tls_args=()
            if [[ -n $TLS_PORT ]]; then
                tls_args=(--tls-listen "127.0.0.1:$TLS_PORT" --cert "$TLS_CERT" --key "$TLS_KEY")
            fi
            "${PIN_SERVER[@]}" node "$UWS_DIR/server.js" --listen "127.0.0.1:$PORT" \
                "${tls_args[@]}" > "$out" 2>&1 &
            ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            wait "$SERVER_PID" 2>/dev/null || true
            SERVER_PID=
            START_ERROR="server exited at start: $(tail -c 300 "$out" | tr '\n' ' ')"
            return 1
        fi
        if port_in_use "$PORT" && { [[ -z $TLS_PORT ]] || port_in_use "$TLS_PORT"; }; then
            return 0
        fi
        sleep 0.1
    done
    stop_server
    START_ERROR="server did not listen on 127.0.0.1:$PORT within 10 s"
    return 1
}

stop_server() {
    [[ -n ${SERVER_PID:-} ]] || return 0
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 30); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# --- Cluster setups (wshub only) ---------------------------------------------
#
# A setup is one of:
#   solo    one wshub, no [cluster]: the single-node baseline
#   bus1    one wshub node on Redis
#   bus3    three wshub nodes on one Redis, each on its own port
#   reuse1  one node on Redis whose listener has reuse_port = true
#   reuse2  two nodes on Redis sharing one port (reuse_port = true): the
#           kernel spreads connections between them
#   hist1   bus1 with history on /live (history_size 100): positions and the
#           stream kept in Redis by the publish script
#   hist3   bus3 with history on /live
# Redis (redis-server, persistence off, on a free loopback port) and every
# node are pinned like the single server (SERVER_CPU), loadgen to
# LOADGEN_CPU: on 2 cores that is the only split that keeps loadgen's core
# to itself, and the solo row runs the same way, so the comparison is fair.
# Each node also listens on a private port of its own, where run.sh asks
# its /healthz: a node answers 200 only once both its Redis links are up.

redis_cli() { # port command...: a one-line answer, without redis-cli
    local port=$1 reply
    shift
    exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
    printf '%s\r\n' "$*" >&3
    IFS= read -r -t 2 reply <&3 || true
    exec 3>&-
    printf '%s' "${reply%$'\r'}"
}

start_redis() {
    command -v redis-server >/dev/null \
        || { START_ERROR="redis-server is not installed"; return 1; }
    REDIS_PORT=$(free_port) || { START_ERROR="no free port found"; return 1; }
    "${PIN_SERVER[@]}" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
        --save '' --appendonly no --protected-mode no --loglevel warning \
        > "$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 1 100); do
        kill -0 "$REDIS_PID" 2>/dev/null || break
        [[ $(redis_cli "$REDIS_PORT" PING 2>/dev/null) == +PONG ]] && return 0
        sleep 0.1
    done
    START_ERROR="redis-server did not answer PING on 127.0.0.1:$REDIS_PORT: $(tail -c 300 "$WORK/redis.log" | tr '\n' ' ')"
    return 1
}

# start_node K SHARED_PORT: node K (1, 2, ...) listening on SHARED_PORT
# (with reuse_port = true when REUSE=1, else on a port of its own when
# SHARED_PORT is empty) plus a private health port; on Redis unless
# REDIS_PORT is empty.
start_node() {
    local k=$1 port=$2 health config=$WORK/node$1.toml
    health=$(free_port) || { START_ERROR="no free port found"; return 1; }
    if [[ -z $port ]]; then
        port=$health
        write_config bench/wshub-bench.toml "$port" "$config"
    else
        write_config bench/wshub-bench.toml "$port" "$config"
        [[ $REUSE == 1 ]] && sed -i '/^address = /a reuse_port = true' "$config"
        printf '\n[[listener]]\naddress = "127.0.0.1:%s"\n' "$health" >> "$config"
    fi
    if [[ $HISTORY == 1 ]]; then
        sed -i '/^path = "\/live"$/a history_size = 100' "$config"
    fi
    if [[ -n $REDIS_PORT ]]; then
        printf '\n[cluster]\nredis_url = "redis://127.0.0.1:%s/0"\nnode_name = "bench-%s"\n' \
            "$REDIS_PORT" "$k" >> "$config"
    fi
    RUST_LOG=warn "${PIN_SERVER[@]}" "$WSHUB_BIN" --config "$config" > "$WORK/node$k.log" 2>&1 &
    NODE_PIDS+=("$!")
    NODE_PORTS+=("$port")
    NODE_HEALTH+=("$health")
    local code
    for _ in $(seq 1 100); do
        if ! kill -0 "${NODE_PIDS[-1]}" 2>/dev/null; then
            START_ERROR="node $k exited at start: $(tail -c 300 "$WORK/node$k.log" | tr '\n' ' ')"
            return 1
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$health/healthz" || true)
        [[ $code == 200 ]] && return 0
        sleep 0.1
    done
    START_ERROR="node $k not healthy on 127.0.0.1:$health within 10 s (last answer: ${code:-none})"
    return 1
}

# start_cluster SETUP: sets NODE_PIDS, NODE_PORTS (@PORT@, @PORT2@, ...)
# and, on Redis, REDIS_PID; on failure START_ERROR and returns 1.
start_cluster() {
    local setup=$1 nodes shared=
    START_ERROR=
    NODE_PIDS=() NODE_PORTS=() NODE_HEALTH=() REDIS_PID= REDIS_PORT= REUSE=0 HISTORY=0
    case $setup in
        solo) nodes=1 ;;
        bus1) nodes=1 ;;
        bus3) nodes=3 ;;
        hist1) nodes=1 HISTORY=1 ;;
        hist3) nodes=3 HISTORY=1 ;;
        reuse1) nodes=1 REUSE=1 ;;
        reuse2) nodes=2 REUSE=1 ;;
        *) START_ERROR="unknown setup $setup"; return 1 ;;
    esac
    if [[ $setup != solo ]]; then
        start_redis || return 1
    fi
    if [[ $REUSE == 1 ]]; then
        shared=$(free_port) || { START_ERROR="no free port found"; return 1; }
    fi
    for k in $(seq 1 "$nodes"); do
        start_node "$k" "$shared" || return 1
    done
}

stop_pid() {
    kill "$1" 2>/dev/null || true
    for _ in $(seq 1 30); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

stop_cluster() {
    local pid
    for pid in "${NODE_PIDS[@]}"; do
        stop_pid "$pid"
    done
    NODE_PIDS=()
    if [[ -n ${REDIS_PID:-} ]]; then
        stop_pid "$REDIS_PID"
        REDIS_PID=
    fi
}

# --- Scenarios -------------------------------------------------------------

# Benchmark-only tokens for the routes with token auth (bench/keys/mint.py).
HS256_TOKEN=$(tr -d '\n' < bench/keys/hs256.token)
ES256_TOKEN=$(tr -d '\n' < bench/keys/es256.token)

# name | kind (echo, broadcast, idle) | title | loadgen arguments (@PORT@
# is replaced by the server's port).
SCENARIOS=(
    "echo-d16|echo|Echo: 64 B, 100 connections, depth 16, ${ECHO_SECS} s|echo --url ws://127.0.0.1:@PORT@/echo --conns 100 --depth 16 --size 64 --seconds $ECHO_SECS"
    "wss-echo-d16|echo|Echo over TLS (wss://): 64 B, 100 connections, depth 16, ${ECHO_SECS} s|echo --url wss://127.0.0.1:@TLSPORT@/echo --ca @CA@ --conns 100 --depth 16 --size 64 --seconds $ECHO_SECS"
    "echo-d1|echo|Echo: 64 B, 100 connections, depth 1, ${ECHO_SECS} s|echo --url ws://127.0.0.1:@PORT@/echo --conns 100 --depth 1 --size 64 --seconds $ECHO_SECS"
    "wss-echo-d1|echo|Echo over TLS (wss://): 64 B, 100 connections, depth 1, ${ECHO_SECS} s|echo --url wss://127.0.0.1:@TLSPORT@/echo --ca @CA@ --conns 100 --depth 1 --size 64 --seconds $ECHO_SECS"
    "echo-16k|echo|Echo: 16 KiB, 10 connections, depth 1, ${ECHO_SECS} s|echo --url ws://127.0.0.1:@PORT@/echo --conns 10 --depth 1 --size 16384 --seconds $ECHO_SECS"
    "bc-$SUBS_A-w1-http|broadcast|Broadcast: 64 B to $SUBS_A subscribers, window 1, HTTP publisher, $M_W1_A messages|broadcast --url ws://127.0.0.1:@PORT@/live/bench --subscribers $SUBS_A --messages $M_W1_A --window 1 --size 64 --publisher http"
    "bc-$SUBS_A-w16-http|broadcast|Broadcast: 64 B to $SUBS_A subscribers, window 16, HTTP publisher, $M_W16_A messages|broadcast --url ws://127.0.0.1:@PORT@/live/bench --subscribers $SUBS_A --messages $M_W16_A --window 16 --size 64 --publisher http"
    "bc-sse-$SUBS_A-w1-http|broadcast|Broadcast to event streams (Server-Sent Events): 64 B of text to $SUBS_A SSE subscribers, window 1, HTTP publisher, $M_W1_A messages (compare bc-$SUBS_A-w1-http)|broadcast --url ws://127.0.0.1:@PORT@/live/bench --sse --subscribers $SUBS_A --messages $M_W1_A --window 1 --size 64 --payload text --publisher http"
    "bc-sse-$SUBS_A-w16-http|broadcast|Broadcast to event streams (Server-Sent Events): 64 B of text to $SUBS_A SSE subscribers, window 16, HTTP publisher, $M_W16_A messages (compare bc-$SUBS_A-w16-http)|broadcast --url ws://127.0.0.1:@PORT@/live/bench --sse --subscribers $SUBS_A --messages $M_W16_A --window 16 --size 64 --payload text --publisher http"
    "wss-bc-$SUBS_A-w16-http|broadcast|Broadcast over TLS (wss://): 64 B to $SUBS_A subscribers, window 16, HTTP publisher on the plain listener, $M_W16_A messages|broadcast --url wss://127.0.0.1:@TLSPORT@/live/bench --ca @CA@ --publish-url http://127.0.0.1:@PORT@/publish/bench --subscribers $SUBS_A --messages $M_W16_A --window 16 --size 64 --publisher http"
    "bc-$SUBS_A-w16-ws|broadcast|Broadcast: 64 B to $SUBS_A subscribers, window 16, WebSocket publisher (relayed), $M_W16_A messages|broadcast --url ws://127.0.0.1:@PORT@/live/bench --subscribers $SUBS_A --messages $M_W16_A --window 16 --size 64 --publisher ws"
    "bc-$SUBS_B-w1-http|broadcast|Broadcast: 64 B to $SUBS_B subscribers, window 1, HTTP publisher, $M_W1_B messages|broadcast --url ws://127.0.0.1:@PORT@/live/bench --subscribers $SUBS_B --messages $M_W1_B --window 1 --size 64 --publisher http"
    "bc-$SUBS_B-w16-http|broadcast|Broadcast: 64 B to $SUBS_B subscribers, window 16, HTTP publisher, $M_W16_B messages|broadcast --url ws://127.0.0.1:@PORT@/live/bench --subscribers $SUBS_B --messages $M_W16_B --window 16 --size 64 --publisher http"
    "fanout-stall-$SUBS_B|stall|Echo latency during a big fan-out: 64 B to $SUBS_B subscribers, window 1, HTTP publisher, $M_STALL messages, while one more client does back-to-back 64 B echoes|broadcast --url ws://127.0.0.1:@PORT@/live/bench --subscribers $SUBS_B --messages $M_STALL --window 1 --size 64 --publisher http --echo-url ws://127.0.0.1:@PORT@/echo --echo-size 64"
    "bc-$SUBS_A-w16-json|broadcast|Broadcast: 1 KiB JSON-like to $SUBS_A subscribers, window 16, HTTP publisher, compression off, $M_W16_A messages|broadcast --url ws://127.0.0.1:@PORT@/live/bench --subscribers $SUBS_A --messages $M_W16_A --window 16 --size 1024 --payload json --publisher http"
    "bc-$SUBS_A-w16-deflate|broadcast|Broadcast: 1 KiB JSON-like to $SUBS_A subscribers, window 16, HTTP publisher, permessage-deflate, $M_W16_A messages|broadcast --url ws://127.0.0.1:@PORT@/deflate/bench --deflate --subscribers $SUBS_A --messages $M_W16_A --window 16 --size 1024 --payload json --publisher http"
    "idle-$SUBS_A|idle|Idle: $SUBS_A subscribers, server RSS per connection, one fan-out, RSS again after 10 broadcasts of 64 B|idle --url ws://127.0.0.1:@PORT@/live/idle --conns $SUBS_A"
    "idle-$SUBS_B|idle|Idle: $SUBS_B subscribers, server RSS per connection, one fan-out, RSS again after 10 broadcasts of 64 B|idle --url ws://127.0.0.1:@PORT@/live/idle --conns $SUBS_B"
    "idle-sse-$SUBS_A|idle|Idle event streams (Server-Sent Events): $SUBS_A SSE subscribers, server RSS per connection, one fan-out, RSS again after 10 broadcasts of 64 B (binary events, base64)|idle --url ws://127.0.0.1:@PORT@/live/idle --sse --conns $SUBS_A"
    "idle-sse-$SUBS_B|idle|Idle event streams (Server-Sent Events): $SUBS_B SSE subscribers, server RSS per connection, one fan-out, RSS again after 10 broadcasts of 64 B (binary events, base64)|idle --url ws://127.0.0.1:@PORT@/live/idle --sse --conns $SUBS_B"
    "idle-wss-$SUBS_A|idle|Idle over TLS (wss://): $SUBS_A subscribers, server RSS per connection, one fan-out (published over plain HTTP), RSS again after 10 broadcasts of 64 B|idle --url wss://127.0.0.1:@TLSPORT@/live/idle --ca @CA@ --publish-url http://127.0.0.1:@PORT@/publish/idle --conns $SUBS_A"
    "idle-wss-$SUBS_B|idle|Idle over TLS (wss://): $SUBS_B subscribers, server RSS per connection, one fan-out (published over plain HTTP), RSS again after 10 broadcasts of 64 B|idle --url wss://127.0.0.1:@TLSPORT@/live/idle --ca @CA@ --publish-url http://127.0.0.1:@PORT@/publish/idle --conns $SUBS_B"
    "idle-$SUBS_A-hs256|idle|Idle: $SUBS_A subscribers on a route that verifies an HS256 token (in the query string), server RSS per connection, then one fan-out|idle --url ws://127.0.0.1:@PORT@/auth-hs256/idle?token=$HS256_TOKEN --publish-url http://127.0.0.1:@PORT@/publish/idle --conns $SUBS_A"
    "idle-$SUBS_A-ping|idle|Idle: $SUBS_A subscribers with keep-alive pings on (ping_interval = \"30s\", the default), server RSS per connection, then one fan-out|idle --url ws://127.0.0.1:@PORT@/live/idle --conns $SUBS_A"
    "idle-$SUBS_A-hs256-ping|idle|Idle: $SUBS_A subscribers on the HS256 token route with keep-alive pings on (the default 30 s), server RSS per connection, then one fan-out|idle --url ws://127.0.0.1:@PORT@/auth-hs256/idle?token=$HS256_TOKEN --publish-url http://127.0.0.1:@PORT@/publish/idle --conns $SUBS_A"
    "idle-$SUBS_A-es256|idle|Idle: $SUBS_A subscribers on a route that verifies an ES256 token (in the query string), server RSS per connection, then one fan-out|idle --url ws://127.0.0.1:@PORT@/auth-es256/idle?token=$ES256_TOKEN --publish-url http://127.0.0.1:@PORT@/publish/idle --conns $SUBS_A"
    "idle-$SUBS_A-deflate|idle|Idle: $SUBS_A subscribers with permessage-deflate negotiated, server RSS per connection, then one fan-out|idle --url ws://127.0.0.1:@PORT@/deflate/idle --conns $SUBS_A --deflate"
    "bc-$SUBS_A-w16-meta|broadcast|Broadcast with metadata: 64 B to $SUBS_A subscribers that asked for channel and position (meta=1), window 16, HTTP publisher, $M_W16_A messages (compare bc-$SUBS_A-w16-http)|broadcast --url ws://127.0.0.1:@PORT@/live/bench --meta --subscribers $SUBS_A --messages $M_W16_A --window 16 --size 64 --publisher http"
    "bc-$SUBS_A-w16-124|broadcast|Broadcast: 124 B to $SUBS_A subscribers, window 16, HTTP publisher, $M_W16_A messages: plain frames as long as bc-$SUBS_A-w16-meta's (126 B), to tell the metadata's cost from its length|broadcast --url ws://127.0.0.1:@PORT@/live/bench --subscribers $SUBS_A --messages $M_W16_A --window 16 --size 124 --publisher http"
    "idle-$SUBS_A-meta|idle|Idle: $SUBS_A subscribers with metadata on (meta=1), server RSS per connection|idle --url ws://127.0.0.1:@PORT@/live/idle?meta=1 --conns $SUBS_A --no-publish --size 256"
    "recover-$SUBS_A|recover|History and recovery: memory per history message ($HIST_M messages of 64 B), then $SUBS_A clients reconnect at once and recover 100 messages each|recover --url ws://127.0.0.1:@PORT@/hist/r --history $HIST_M --clients $SUBS_A --missed 100 --size 64"
)

# Cluster scenarios (wshub only; see "Cluster setups" above). Each group is
# one table in the report, its scenarios are the columns.
# group id | title
CLUSTER_GROUPS=(
    "w1|Broadcast: 64 B to $SUBS_C subscribers, window 1, HTTP publisher, $M_CW1 messages"
    "w16|Broadcast: 64 B to $SUBS_C subscribers, window 16, HTTP publisher, $M_CW16 messages"
    "w16-ws|Broadcast: 64 B to $SUBS_C subscribers, window 16, WebSocket publisher (relayed) on the first node, $M_CWS messages"
    "hop|The Redis hop: 64 B to $HOP_SUBS subscribers, window 1, HTTP publisher, $M_HOP messages"
    "reuse-bc|reuse_port: 64 B to $SUBS_C subscribers on one port, window 16, WebSocket publisher (relayed), every process on Redis, $M_CWS messages"
    "reuse-echo|reuse_port: echo 64 B, 100 connections, depth 16, ${ECHO_SECS} s, on one port"
)
CL_BC="broadcast --window @W@ --size 64 --publisher http"
CL_WS="broadcast --window 16 --size 64 --publisher ws"
CL_URL1="--url ws://127.0.0.1:@PORT@/live/bench"
CL_URL3="$CL_URL1 --url ws://127.0.0.1:@PORT2@/live/bench --url ws://127.0.0.1:@PORT3@/live/bench"
# name | group | column | setup | kind | loadgen arguments (@PORT@, @PORT2@,
# @PORT3@: the nodes' ports)
CLUSTER_SCENARIOS=(
    "cl-solo-$SUBS_C-w1|w1|single node, no cluster|solo|broadcast|${CL_BC/@W@/1} $CL_URL1 --subscribers $SUBS_C --messages $M_CW1"
    "cl-bus1-$SUBS_C-w1|w1|one node on Redis|bus1|broadcast|${CL_BC/@W@/1} $CL_URL1 --subscribers $SUBS_C --messages $M_CW1"
    "cl-bus3-$SUBS_C-w1|w1|three nodes on Redis|bus3|broadcast|${CL_BC/@W@/1} $CL_URL3 --subscribers $SUBS_C --messages $M_CW1"
    "cl-hist1-$SUBS_C-w1|w1|one node on Redis, history on|hist1|broadcast|${CL_BC/@W@/1} $CL_URL1 --subscribers $SUBS_C --messages $M_CW1"
    "cl-solo-$SUBS_C-w16|w16|single node, no cluster|solo|broadcast|${CL_BC/@W@/16} $CL_URL1 --subscribers $SUBS_C --messages $M_CW16"
    "cl-bus1-$SUBS_C-w16|w16|one node on Redis|bus1|broadcast|${CL_BC/@W@/16} $CL_URL1 --subscribers $SUBS_C --messages $M_CW16"
    "cl-bus3-$SUBS_C-w16|w16|three nodes on Redis|bus3|broadcast|${CL_BC/@W@/16} $CL_URL3 --subscribers $SUBS_C --messages $M_CW16"
    "cl-hist1-$SUBS_C-w16|w16|one node on Redis, history on|hist1|broadcast|${CL_BC/@W@/16} $CL_URL1 --subscribers $SUBS_C --messages $M_CW16"
    "cl-hist3-$SUBS_C-w16|w16|three nodes on Redis, history on|hist3|broadcast|${CL_BC/@W@/16} $CL_URL3 --subscribers $SUBS_C --messages $M_CW16"
    "cl-solo-$SUBS_C-w16-ws|w16-ws|single node, no cluster|solo|broadcast|$CL_WS $CL_URL1 --subscribers $SUBS_C --messages $M_CWS"
    "cl-bus1-$SUBS_C-w16-ws|w16-ws|one node on Redis|bus1|broadcast|$CL_WS $CL_URL1 --subscribers $SUBS_C --messages $M_CWS"
    "cl-bus3-$SUBS_C-w16-ws|w16-ws|three nodes on Redis|bus3|broadcast|$CL_WS $CL_URL3 --subscribers $SUBS_C --messages $M_CWS"
    "cl-solo-$HOP_SUBS-hop|hop|single node, no cluster|solo|broadcast|${CL_BC/@W@/1} $CL_URL1 --subscribers $HOP_SUBS --messages $M_HOP"
    "cl-bus1-$HOP_SUBS-hop|hop|one node on Redis|bus1|broadcast|${CL_BC/@W@/1} $CL_URL1 --subscribers $HOP_SUBS --messages $M_HOP"
    "cl-bus3-$HOP_SUBS-hop|hop|three nodes on Redis|bus3|broadcast|${CL_BC/@W@/1} $CL_URL3 --subscribers $HOP_SUBS --messages $M_HOP"
    "cl-reuse1-$SUBS_C-w16-ws|reuse-bc|one process|reuse1|broadcast|$CL_WS $CL_URL1 --subscribers $SUBS_C --messages $M_CWS"
    "cl-reuse2-$SUBS_C-w16-ws|reuse-bc|two processes, one port|reuse2|broadcast|$CL_WS $CL_URL1 --subscribers $SUBS_C --messages $M_CWS"
    "cl-reuse1-echo-d16|reuse-echo|one process|reuse1|echo|echo --url ws://127.0.0.1:@PORT@/echo --conns 100 --depth 16 --size 64 --seconds $ECHO_SECS"
    "cl-reuse2-echo-d16|reuse-echo|two processes, one port|reuse2|echo|echo --url ws://127.0.0.1:@PORT@/echo --conns 100 --depth 16 --size 64 --seconds $ECHO_SECS"
)

# Metrics per kind: json_key|label|decimals|better (higher/lower).
metrics_for() {
    case $1 in
        echo) printf '%s\n' \
            "msgs_per_s|messages/s|0|higher" \
            "mb_per_s_each_way|payload MB/s, each way|1|higher" \
            "p50_us|latency p50 (us)|1|lower" \
            "p99_us|latency p99 (us)|1|lower" \
            "p999_us|latency p99.9 (us)|1|lower" \
            "server_cpu_us_per_message|server CPU per message (us)|3|lower" \
            "server_cpu_pct|server CPU (% of a core)|0|-" \
            "loadgen_cpu_pct|loadgen CPU (% of a core)|0|-" ;;
        broadcast) printf '%s\n' \
            "deliveries_per_s|deliveries/s|0|higher" \
            "p50_us|publish to last receipt p50 (us)|0|lower" \
            "p99_us|publish to last receipt p99 (us)|0|lower" \
            "max_us|publish to last receipt max (us)|0|lower" \
            "server_cpu_us_per_delivery|server CPU per delivery (us)|3|lower" \
            "server_cpu_pct|server CPU (% of a core)|0|-" \
            "loadgen_cpu_pct|loadgen CPU (% of a core)|0|-" ;;
        idle) printf '%s\n' \
            "bytes_per_conn|server RSS per connection (bytes)|0|lower" \
            "bytes_per_conn_after|server RSS per connection after broadcasts (bytes)|0|lower" \
            "handshakes_per_s|handshakes/s while dialing|0|higher" \
            "server_cpu_us_per_handshake|server CPU per handshake (us)|1|lower" \
            "fanout_ms|one message to all (ms)|2|lower" ;;
        stall) printf '%s\n' \
            "echo_max_us|echo round trip during the fan-out, max (us)|0|lower" \
            "echo_p99_us|echo round trip during the fan-out, p99 (us)|0|lower" \
            "echo_p50_us|echo round trip during the fan-out, p50 (us)|0|lower" \
            "echo_round_trips|echo round trips during the fan-out|0|-" \
            "deliveries_per_s|deliveries/s|0|higher" \
            "p99_us|publish to last receipt p99 (us)|0|lower" \
            "server_cpu_us_per_delivery|server CPU per delivery (us)|3|lower" \
            "server_cpu_pct|server CPU (% of a core)|0|-" \
            "loadgen_cpu_pct|loadgen CPU (% of a core)|0|-" ;;
        recover) printf '%s\n' \
            "bytes_per_history_message|server RSS per history message (bytes)|0|lower" \
            "storm_s|all clients reconnected and recovered (s)|2|lower" \
            "dial_s|of which dialing (s)|2|-" \
            "server_cpu_s|server CPU during the reconnect (s)|2|lower" \
            "recovered_msgs_per_s|messages replayed/s|0|higher" ;;
    esac
}

# Metrics of the cluster tables: the server's CPU is summed over its nodes;
# the bus is redis-server.
cluster_metrics_for() {
    case $1 in
        echo) printf '%s\n' \
            "msgs_per_s|messages/s|0|higher" \
            "p50_us|latency p50 (us)|1|lower" \
            "p99_us|latency p99 (us)|1|lower" \
            "server_cpu_us_per_message|server CPU per message, all processes (us)|3|lower" \
            "server_cpu_pct|server CPU, all processes (% of a core)|0|-" \
            "loadgen_cpu_pct|loadgen CPU (% of a core)|0|-" ;;
        broadcast) printf '%s\n' \
            "deliveries_per_s|deliveries/s|0|higher" \
            "p50_us|publish to last receipt p50 (us)|0|lower" \
            "p99_us|publish to last receipt p99 (us)|0|lower" \
            "first_p50_us|publish to first receipt p50 (us)|0|lower" \
            "first_p99_us|publish to first receipt p99 (us)|0|lower" \
            "server_cpu_us_per_delivery|server CPU per delivery, all nodes (us)|3|lower" \
            "bus_cpu_us_per_delivery|redis-server CPU per delivery (us)|4|lower" \
            "server_cpu_pct|server CPU, all nodes (% of a core)|0|-" \
            "bus_cpu_pct|redis-server CPU (% of a core)|0|-" \
            "loadgen_cpu_pct|loadgen CPU (% of a core)|0|-" \
            "recipients_max|publish answer's recipients|0|-" ;;
    esac
}

# Each run uses a fresh range of client source addresses (127.0.k.2, …),
# so no run shares connection tuples with sockets the previous one left in
# TIME_WAIT. (Set in this shell, not in a $(...) subshell, so it advances.)
SOURCE_SLOT=0

# run_loadgen OUT ARG...: one loadgen run, pinned, under a deadline, from
# the next source address range; its stdout goes to OUT and its stderr to
# $WORK/stderr.txt. Returns loadgen's exit status. (Call it directly, not in
# $(...), so SOURCE_SLOT advances.)
run_loadgen() {
    local out=$1
    shift
    SOURCE_SLOT=$(( SOURCE_SLOT % 250 + 1 ))
    timeout --kill-after=5 $(( LOADGEN_TIMEOUT + 60 )) \
        "${PIN_LOADGEN[@]}" "$LOADGEN_BIN" "$@" \
        --source-base "127.0.$SOURCE_SLOT.2" \
        --timeout "$LOADGEN_TIMEOUT" > "$out" 2> "$WORK/stderr.txt"
}

# keep_run RC OUT ERR JSONL: shows a run's output; a failed run (RC not 0)
# leaves its reason in ERR and returns 1, a good one adds its JSON line.
keep_run() {
    local rc=$1 out=$2 err=$3 jsonl=$4
    sed 's/^/    /' "$out" >&2
    if (( rc != 0 )); then
        local msg
        msg=$(grep -v '^$' "$WORK/stderr.txt" | head -n 1 | sed 's/^loadgen: //' | cut -c1-300)
        echo "${msg:-loadgen exited with status $rc}" > "$err"
        log "  failed: $(cat "$err")"
        return 1
    fi
    tail -n 1 "$out" >> "$jsonl"
}

# lacks SERVER NAME KIND ARGS: prints why SERVER does not take part in a
# scenario (a feature it does not have), or nothing. Its cells show "–".
lacks() {
    local server=$1 name=$2 kind=$3 args=$4 who
    case $server in
        peer) who="the fastwebsockets peer (bench/peer)" ;;
        uws) who="the uWebSockets.js peer (bench/peer-uws)" ;;
        *) return 0 ;;
    esac
    if [[ $name == *-ping ]]; then
        echo "$who sends no keep-alive pings"
    elif [[ $args == *--meta* || $args == *meta=1* || $kind == recover ]]; then
        echo "$who has no positions, history or metadata"
    elif [[ $args == *--sse* ]]; then
        echo "$who serves no Server-Sent Events"
    elif [[ $args == *--deflate* ]]; then
        echo "$who runs with compression off"
    elif [[ $args == *token=* ]]; then
        echo "$who does not verify tokens"
    elif [[ $args == *wss://* && $server == peer ]]; then
        echo "$who does not serve TLS"
    fi
}

run_scenario() { # server index
    local server=$1 i=$2 name kind title args
    IFS='|' read -r name kind title args <<< "${SCENARIOS[$i]}"
    local jsonl=$WORK/$server.$name.jsonl err=$WORK/$server.$name.err
    local skip=$WORK/$server.$name.skip
    : > "$jsonl"
    local why
    why=$(lacks "$server" "$name" "$kind" "$args")
    if [[ -n $why ]]; then
        echo "$why" > "$skip"
        log "[$server] $name –: $why"
        return
    fi
    SERVER_PING=
    [[ $name == *-ping ]] && SERVER_PING=30s
    if [[ $args == *wss://* && -n $TLS_ERROR ]]; then
        echo "$TLS_ERROR" > "$err"
        log "[$server] $name n/a: $TLS_ERROR"
        return
    fi
    for run in $(seq 1 "$RUNS"); do
        log "[$server] $name run $run/$RUNS"
        # A fresh server per run: idle RSS needs an untouched process, and
        # no run inherits another's state.
        if ! start_server "$server" "$kind"; then
            echo "$START_ERROR" > "$err"
            log "  n/a: $START_ERROR"
            return
        fi
        local argv
        local expanded=${args//@PORT@/$PORT}
        expanded=${expanded//@TLSPORT@/$TLS_PORT}
        read -r -a argv <<< "${expanded//@CA@/$TLS_CERT}"
        local out=$WORK/out.txt rc=0
        run_loadgen "$out" "${argv[@]}" --server-pid "$SERVER_PID" || rc=$?
        stop_server
        keep_run "$rc" "$out" "$err" "$jsonl" || return 0
    done
}

run_cluster_scenario() { # index
    local name group column setup kind args
    IFS='|' read -r name group column setup kind args <<< "${CLUSTER_SCENARIOS[$1]}"
    local jsonl=$WORK/wshub.$name.jsonl err=$WORK/wshub.$name.err
    : > "$jsonl"
    for run in $(seq 1 "$RUNS"); do
        log "[wshub $setup] $name run $run/$RUNS"
        if ! start_cluster "$setup"; then
            stop_cluster
            echo "$START_ERROR" > "$err"
            log "  n/a: $START_ERROR"
            return
        fi
        local argv expanded=$args k pids=()
        for k in "${!NODE_PORTS[@]}"; do
            if (( k == 0 )); then
                expanded=${expanded//@PORT@/${NODE_PORTS[0]}}
            else
                expanded=${expanded//@PORT$((k + 1))@/${NODE_PORTS[$k]}}
            fi
        done
        for k in "${NODE_PIDS[@]}"; do pids+=(--server-pid "$k"); done
        [[ -n $REDIS_PID ]] && pids+=(--bus-pid "$REDIS_PID")
        read -r -a argv <<< "$expanded"
        local out=$WORK/out.txt rc=0
        run_loadgen "$out" "${argv[@]}" "${pids[@]}" || rc=$?
        # How the clients were shared: each node's accepted WebSocket
        # handshakes (its /metrics; the WebSocket publisher included).
        local h shares=()
        for h in "${NODE_HEALTH[@]}"; do
            shares+=("$(curl -s "http://127.0.0.1:$h/metrics" \
                | sed -n 's/^wshub_handshakes_accepted_total //p' | head -n 1)")
        done
        (IFS=/; echo "${shares[*]}") > "$WORK/wshub.$name.shares"
        stop_cluster
        keep_run "$rc" "$out" "$err" "$jsonl" || return 0
    done
}

# --- Tables ------------------------------------------------------------------

median_of() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

cell() { # server name key decimals
    local jsonl=$WORK/$1.$2.jsonl err=$WORK/$1.$2.err
    if [[ -s $WORK/$1.$2.skip ]]; then
        echo "–"
    elif [[ -s $err ]]; then
        echo "n/a"
    elif [[ -s $jsonl ]]; then
        local s
        s=$(json_field "$3" < "$jsonl" | summarize "$4")
        echo "${s:-–}"
    else
        echo "–"
    fi
}

ratio() { # name key other: wshub's median / the other server's
    local a b
    [[ -s $WORK/wshub.$1.jsonl && ! -s $WORK/wshub.$1.err ]] || { echo "–"; return; }
    [[ -s $WORK/$3.$1.jsonl && ! -s $WORK/$3.$1.err ]] || { echo "–"; return; }
    a=$(json_field "$2" < "$WORK/wshub.$1.jsonl" | median_of)
    b=$(json_field "$2" < "$WORK/$3.$1.jsonl" | median_of)
    awk -v a="$a" -v b="$b" 'BEGIN { if (a == "" || b == "" || b == 0) print "–"; else printf "%.2f", a / b }'
}

# --- Run -------------------------------------------------------------------------

START=$(date -u '+%Y-%m-%d %H:%M UTC')
# Before the results file is opened, which would count as a change.
REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain 2>/dev/null | head -n 1) ]]; then
    REVISION="$REVISION (with uncommitted changes)"
fi
if [[ $WSHUB_BIN != "$CARGO_TARGET_DIR/release/wshub" ]]; then
    REVISION="binary $WSHUB_BIN (not built from $REVISION)"
fi
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for i in "${!SCENARIOS[@]}"; do
    IFS='|' read -r name _ <<< "${SCENARIOS[$i]}"
    [[ -z $ONLY || $name =~ $ONLY ]] || continue
    for server in $SERVERS; do
        run_scenario "$server" "$i"
    done
done
CLUSTER_RAN=0
if [[ $CLUSTER == 1 && " $SERVERS " == *" wshub "* && $WSHUB_FULL_OK == 1 ]]; then
    for i in "${!CLUSTER_SCENARIOS[@]}"; do
        IFS='|' read -r name _ <<< "${CLUSTER_SCENARIOS[$i]}"
        [[ -z $ONLY || $name =~ $ONLY ]] || continue
        CLUSTER_RAN=1
        run_cluster_scenario "$i"
    done
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- Report ------------------------------------------------------------------

{
    echo "# wshub benchmark results"
    echo
    echo "- Date: $START$( [[ $QUICK == 1 ]] && echo ' (QUICK=1 smoke run: small sizes, not for comparison)')"
    echo "- Machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), kernel $(uname -r)"
    echo "- Load average before/after: $LOAD_BEFORE / $LOAD_AFTER (other work on the machine skews results)"
    echo "- wshub: $REVISION; peer: fastwebsockets on tokio current_thread (bench/peer); uWS: ${UWS_VERSION:-uWebSockets.js} (bench/peer-uws; its RSS includes the Node runtime, whose baseline the per-connection figures subtract)"
    echo "- Pinning: $PINNING; $RUNS run(s) per scenario, each against a freshly started server"
    echo "- Cells: median [min–max] over the runs; ratios = wshub median / peer median, wshub median / uWS median; – = the server does not take part (reason below the table)"
    if [[ $WSHUB_FULL_OK == 0 ]]; then
        echo "- wshub rejected bench/wshub-bench.toml (\`$WSHUB_CONFIG_ERROR\`); its echo runs used the echo routes only"
    fi
    echo
    for i in "${!SCENARIOS[@]}"; do
        IFS='|' read -r name kind title args <<< "${SCENARIOS[$i]}"
        [[ -z $ONLY || $name =~ $ONLY ]] || continue
        echo "## $title"
        echo
        shown=${args//@PORT@/PORT}
        shown=${shown//@TLSPORT@/TLSPORT}
        echo "\`loadgen ${shown//@CA@/cert.pem} --server-pid PID\`"
        echo
        echo "| metric | wshub | peer | uWS | wshub/peer | wshub/uWS |"
        echo "| --- | --- | --- | --- | --- | --- |"
        while IFS='|' read -r key label decimals better; do
            local_label=$label
            [[ $better == higher ]] && local_label="$label ↑"
            [[ $better == lower ]] && local_label="$label ↓"
            echo "| $local_label | $(cell wshub "$name" "$key" "$decimals") | $(cell peer "$name" "$key" "$decimals") | $(cell uws "$name" "$key" "$decimals") | $(ratio "$name" "$key" peer) | $(ratio "$name" "$key" uws) |"
        done < <(metrics_for "$kind")
        notes=()
        for server in wshub peer uws; do
            if [[ -s $WORK/$server.$name.skip ]]; then
                notes+=("$server –: $(cat "$WORK/$server.$name.skip")")
            elif [[ -s $WORK/$server.$name.err ]]; then
                notes+=("$server n/a: $(sed 's/|/\\|/g' "$WORK/$server.$name.err")")
            fi
        done
        for note in "${notes[@]}"; do
            echo
            echo "$note"
        done
        echo
    done
    if [[ $CLUSTER_RAN == 1 ]]; then
        echo "## Cluster: wshub nodes on one Redis (wshub only)"
        echo
        echo "Every node and redis-server (persistence off, its own loopback port, started"
        echo "and killed per run) share the server's core, loadgen has the other: $PINNING."
        echo "The single node runs the same way. Subscribers are spread evenly over the nodes"
        echo "(\`--url\` once per node), the publisher posts to the first; with reuse_port the"
        echo "kernel spreads them over the processes sharing the port. Server CPU is summed"
        echo "over the nodes; redis-server's is reported apart. A cluster node's publish"
        echo "answer counts the nodes subscribed in Redis, not WebSocket clients."
        echo
        for g in "${CLUSTER_GROUPS[@]}"; do
            IFS='|' read -r gid gtitle <<< "$g"
            cols=()
            for i in "${!CLUSTER_SCENARIOS[@]}"; do
                IFS='|' read -r name group _ <<< "${CLUSTER_SCENARIOS[$i]}"
                [[ $group == "$gid" && ( -z $ONLY || $name =~ $ONLY ) ]] && cols+=("$i")
            done
            (( ${#cols[@]} )) || continue
            echo "### $gtitle"
            echo
            header="| metric |" rule="| --- |"
            for i in "${cols[@]}"; do
                IFS='|' read -r name group column setup gkind args <<< "${CLUSTER_SCENARIOS[$i]}"
                header="$header $column (\`$name\`) |" rule="$rule --- |"
            done
            for i in "${cols[@]}"; do
                IFS='|' read -r name group column setup gkind args <<< "${CLUSTER_SCENARIOS[$i]}"
                shown=${args//@PORT@/PORT1}
                shown=${shown//@PORT2@/PORT2}
                echo "- $column: \`loadgen ${shown//@PORT3@/PORT3} --server-pid PID...\`"
            done
            echo
            echo "$header"
            echo "$rule"
            while IFS='|' read -r key label decimals better; do
                local_label=$label
                [[ $better == higher ]] && local_label="$label ↑"
                [[ $better == lower ]] && local_label="$label ↓"
                row="| $local_label |"
                for i in "${cols[@]}"; do
                    IFS='|' read -r name _ <<< "${CLUSTER_SCENARIOS[$i]}"
                    row="$row $(cell wshub "$name" "$key" "$decimals") |"
                done
                echo "$row"
            done < <(cluster_metrics_for "$gkind")
            row="| WebSocket clients per node, last run |"
            for i in "${cols[@]}"; do
                IFS='|' read -r name _ <<< "${CLUSTER_SCENARIOS[$i]}"
                row="$row $(cat "$WORK/wshub.$name.shares" 2>/dev/null || echo –) |"
            done
            echo "$row"
            for i in "${cols[@]}"; do
                IFS='|' read -r name _ <<< "${CLUSTER_SCENARIOS[$i]}"
                if [[ -s $WORK/wshub.$name.err ]]; then
                    echo
                    echo "$name n/a: $(sed 's/|/\\|/g' "$WORK/wshub.$name.err")"
                fi
            done
            echo
        done
    fi
    echo "↑ higher is better, ↓ lower is better. Every echo is checked (order, length,"
    echo "content) and every broadcast run checks losses, duplicates and ordering; any"
    echo "failure makes that server's cells n/a, with the reason below the table."
} > "$RESULTS"

cat "$RESULTS"
