#!/usr/bin/env bash
# Runs wshub's standard benchmark set against wshub and against a
# fastwebsockets server (bench/peer), then writes bench/results.md and
# prints it. See bench/README.md for what each scenario measures.
#
# Environment knobs:
#   QUICK=1           short smoke run: small sizes, 1 run each
#   RUNS=N            runs per scenario (default 3, QUICK: 1)
#   SERVERS="wshub peer"   which servers to run
#   ONLY=REGEX        only scenarios whose name matches (e.g. ONLY=echo)
#   SERVER_CPU=0 LOADGEN_CPU=1   cores to pin to (taskset -c)
#   RESULTS=FILE      where to write the Markdown (default bench/results.md)
#   BC_M_W1_10K, BC_M_W16_10K, BC_M_W1_19K, BC_M_W16_19K
#                     messages per broadcast run (see the defaults below)
#
# Everything stays on loopback: servers listen on 127.0.0.1, and loadgen
# refuses any other target.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then RUNS=${RUNS:-1}; else RUNS=${RUNS:-3}; fi
SERVERS=${SERVERS:-"wshub peer"}
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
else
    ECHO_SECS=10
    SUBS_A=10000 SUBS_B=19000
    # Sized so one run of the peer takes a few seconds on a 2-core VM; a
    # faster server just finishes sooner. Raise them on faster machines
    # for more latency samples.
    M_W1_A=${BC_M_W1_10K:-60} M_W16_A=${BC_M_W16_10K:-1000}
    M_W1_B=${BC_M_W1_19K:-40} M_W16_B=${BC_M_W16_19K:-600}
fi

log() { printf '%s\n' "$*" >&2; }

# --- Build -----------------------------------------------------------------

log "building release binaries ..."
cargo build --release --quiet -p wshub -p wshub-loadgen
cargo build --release --quiet --manifest-path bench/peer/Cargo.toml --target-dir "$PEER_TARGET"
WSHUB_BIN=$CARGO_TARGET_DIR/release/wshub
LOADGEN_BIN=$CARGO_TARGET_DIR/release/loadgen
PEER_BIN=$PEER_TARGET/release/wshub-bench-peer

# Both processes may hold up to the hard limit of open files.
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT

# A self-signed certificate for the wss:// scenarios (wshub only: the peer
# does not serve TLS). loadgen trusts it through --ca.
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

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    local port
    for _ in $(seq 1 200); do
        # Below the usual ephemeral range (32768+), so no client socket
        # can be holding it.
        port=$(( 20000 + RANDOM % 12000 ))
        if ! port_in_use "$port"; then
            echo "$port"
            return 0
        fi
    done
    return 1
}

# start_server SERVER KIND: starts it pinned on a free port and sets
# SERVER_PID and PORT; on failure sets START_ERROR and returns 1. (Not to be
# called in $(...): the server must be a child of this shell.)
start_server() {
    local server=$1 kind=$2 config
    START_ERROR=
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
            # A second, TLS listener (wss://) beside the plain one.
            TLS_PORT=
            if [[ -z $TLS_ERROR ]]; then
                TLS_PORT=$(free_port) || { START_ERROR="no free port found"; return 1; }
                while [[ $TLS_PORT == "$PORT" ]]; do TLS_PORT=$(free_port); done
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
    esac
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            wait "$SERVER_PID" 2>/dev/null || true
            SERVER_PID=
            START_ERROR="server exited at start: $(tail -c 300 "$out" | tr '\n' ' ')"
            return 1
        fi
        if port_in_use "$PORT"; then
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

# --- Scenarios -------------------------------------------------------------

# name | kind (echo, broadcast, idle) | title | loadgen arguments (@PORT@
# is replaced by the server's port).
SCENARIOS=(
    "echo-d16|echo|Echo: 64 B, 100 connections, depth 16, ${ECHO_SECS} s|echo --url ws://127.0.0.1:@PORT@/echo --conns 100 --depth 16 --size 64 --seconds $ECHO_SECS"
    "wss-echo-d16|echo|Echo over TLS (wss://): 64 B, 100 connections, depth 16, ${ECHO_SECS} s|echo --url wss://127.0.0.1:@TLSPORT@/echo --ca @CA@ --conns 100 --depth 16 --size 64 --seconds $ECHO_SECS"
    "echo-d1|echo|Echo: 64 B, 100 connections, depth 1, ${ECHO_SECS} s|echo --url ws://127.0.0.1:@PORT@/echo --conns 100 --depth 1 --size 64 --seconds $ECHO_SECS"
    "wss-echo-d1|echo|Echo over TLS (wss://): 64 B, 100 connections, depth 1, ${ECHO_SECS} s|echo --url wss://127.0.0.1:@TLSPORT@/echo --ca @CA@ --conns 100 --depth 1 --size 64 --seconds $ECHO_SECS"
    "bc-$SUBS_A-w1-http|broadcast|Broadcast: 64 B to $SUBS_A subscribers, window 1, HTTP publisher, $M_W1_A messages|broadcast --url ws://127.0.0.1:@PORT@/live/bench --subscribers $SUBS_A --messages $M_W1_A --window 1 --size 64 --publisher http"
    "bc-$SUBS_A-w16-http|broadcast|Broadcast: 64 B to $SUBS_A subscribers, window 16, HTTP publisher, $M_W16_A messages|broadcast --url ws://127.0.0.1:@PORT@/live/bench --subscribers $SUBS_A --messages $M_W16_A --window 16 --size 64 --publisher http"
    "wss-bc-$SUBS_A-w16-http|broadcast|Broadcast over TLS (wss://): 64 B to $SUBS_A subscribers, window 16, HTTP publisher on the plain listener, $M_W16_A messages|broadcast --url wss://127.0.0.1:@TLSPORT@/live/bench --ca @CA@ --publish-url http://127.0.0.1:@PORT@/publish/bench --subscribers $SUBS_A --messages $M_W16_A --window 16 --size 64 --publisher http"
    "bc-$SUBS_A-w16-ws|broadcast|Broadcast: 64 B to $SUBS_A subscribers, window 16, WebSocket publisher (relayed), $M_W16_A messages|broadcast --url ws://127.0.0.1:@PORT@/live/bench --subscribers $SUBS_A --messages $M_W16_A --window 16 --size 64 --publisher ws"
    "bc-$SUBS_B-w1-http|broadcast|Broadcast: 64 B to $SUBS_B subscribers, window 1, HTTP publisher, $M_W1_B messages|broadcast --url ws://127.0.0.1:@PORT@/live/bench --subscribers $SUBS_B --messages $M_W1_B --window 1 --size 64 --publisher http"
    "bc-$SUBS_B-w16-http|broadcast|Broadcast: 64 B to $SUBS_B subscribers, window 16, HTTP publisher, $M_W16_B messages|broadcast --url ws://127.0.0.1:@PORT@/live/bench --subscribers $SUBS_B --messages $M_W16_B --window 16 --size 64 --publisher http"
    "bc-$SUBS_A-w16-json|broadcast|Broadcast: 1 KiB JSON-like to $SUBS_A subscribers, window 16, HTTP publisher, compression off, $M_W16_A messages|broadcast --url ws://127.0.0.1:@PORT@/live/bench --subscribers $SUBS_A --messages $M_W16_A --window 16 --size 1024 --payload json --publisher http"
    "bc-$SUBS_A-w16-deflate|broadcast|Broadcast: 1 KiB JSON-like to $SUBS_A subscribers, window 16, HTTP publisher, permessage-deflate, $M_W16_A messages|broadcast --url ws://127.0.0.1:@PORT@/deflate/bench --deflate --subscribers $SUBS_A --messages $M_W16_A --window 16 --size 1024 --payload json --publisher http"
    "idle-$SUBS_A|idle|Idle: $SUBS_A subscribers, server RSS per connection, then one fan-out|idle --url ws://127.0.0.1:@PORT@/live/idle --conns $SUBS_A"
    "idle-$SUBS_B|idle|Idle: $SUBS_B subscribers, server RSS per connection, then one fan-out|idle --url ws://127.0.0.1:@PORT@/live/idle --conns $SUBS_B"
    "idle-$SUBS_A-deflate|idle|Idle: $SUBS_A subscribers with permessage-deflate negotiated, server RSS per connection, then one fan-out|idle --url ws://127.0.0.1:@PORT@/deflate/idle --conns $SUBS_A --deflate"
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
            "fanout_ms|one message to all (ms)|2|lower" ;;
    esac
}

# Each run uses a fresh range of client source addresses (127.0.k.2, …),
# so no run shares connection tuples with sockets the previous one left in
# TIME_WAIT. (Set in this shell, not in a $(...) subshell, so it advances.)
SOURCE_SLOT=0

run_scenario() { # server index
    local server=$1 i=$2 name kind title args
    IFS='|' read -r name kind title args <<< "${SCENARIOS[$i]}"
    local jsonl=$WORK/$server.$name.jsonl err=$WORK/$server.$name.err
    : > "$jsonl"
    if [[ $args == *--deflate* && $server == peer ]]; then
        echo "the peer (bench/peer) does not negotiate permessage-deflate" > "$err"
        log "[$server] $name n/a: $(cat "$err")"
        return
    fi
    if [[ $args == *wss://* ]]; then
        local why=
        [[ $server == peer ]] && why="the peer (bench/peer) does not serve TLS"
        [[ -n $TLS_ERROR ]] && why=$TLS_ERROR
        if [[ -n $why ]]; then
            echo "$why" > "$err"
            log "[$server] $name n/a: $why"
            return
        fi
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
        SOURCE_SLOT=$(( SOURCE_SLOT % 250 + 1 ))
        timeout --kill-after=5 $(( LOADGEN_TIMEOUT + 60 )) \
            "${PIN_LOADGEN[@]}" "$LOADGEN_BIN" "${argv[@]}" \
            --server-pid "$SERVER_PID" --source-base "127.0.$SOURCE_SLOT.2" \
            --timeout "$LOADGEN_TIMEOUT" > "$out" 2> "$WORK/stderr.txt" || rc=$?
        stop_server
        sed 's/^/    /' "$out" >&2
        if (( rc != 0 )); then
            local msg
            msg=$(grep -v '^$' "$WORK/stderr.txt" | head -n 1 | sed 's/^loadgen: //' | cut -c1-300)
            echo "${msg:-loadgen exited with status $rc}" > "$err"
            log "  failed: $(cat "$err")"
            return
        fi
        tail -n 1 "$out" >> "$jsonl"
    done
}

# --- Tables ------------------------------------------------------------------

json_field() { # key < jsonl: one value per line
    sed -n "s/.*\"$1\":\\([^,}]*\\).*/\\1/p" | grep -v null || true
}

# "median [min–max]" of numbers on stdin, or nothing if there are none.
summarize() { # decimals
    sort -g | awk -v d="$1" '
        { v[NR] = $1 }
        END {
            if (NR == 0) exit
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            if (NR == 1) printf "%.*f", d, m
            else printf "%.*f [%.*f–%.*f]", d, m, d, v[1], d, v[NR]
        }'
}

median_of() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

cell() { # server name key decimals
    local jsonl=$WORK/$1.$2.jsonl err=$WORK/$1.$2.err
    if [[ -s $err ]]; then
        echo "n/a"
    elif [[ -s $jsonl ]]; then
        local s
        s=$(json_field "$3" < "$jsonl" | summarize "$4")
        echo "${s:-–}"
    else
        echo "–"
    fi
}

ratio() { # name key
    local a b
    [[ -s $WORK/wshub.$1.jsonl && ! -s $WORK/wshub.$1.err ]] || { echo "–"; return; }
    [[ -s $WORK/peer.$1.jsonl && ! -s $WORK/peer.$1.err ]] || { echo "–"; return; }
    a=$(json_field "$2" < "$WORK/wshub.$1.jsonl" | median_of)
    b=$(json_field "$2" < "$WORK/peer.$1.jsonl" | median_of)
    awk -v a="$a" -v b="$b" 'BEGIN { if (a == "" || b == "" || b == 0) print "–"; else printf "%.2f", a / b }'
}

# --- Run -------------------------------------------------------------------------

START=$(date -u '+%Y-%m-%d %H:%M UTC')
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for i in "${!SCENARIOS[@]}"; do
    IFS='|' read -r name _ <<< "${SCENARIOS[$i]}"
    [[ -z $ONLY || $name =~ $ONLY ]] || continue
    for server in $SERVERS; do
        run_scenario "$server" "$i"
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- Report ------------------------------------------------------------------

{
    echo "# wshub benchmark results"
    echo
    echo "- Date: $START$( [[ $QUICK == 1 ]] && echo ' (QUICK=1 smoke run: small sizes, not for comparison)')"
    echo "- Machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), kernel $(uname -r)"
    echo "- Load average before/after: $LOAD_BEFORE / $LOAD_AFTER (other work on the machine skews results)"
    echo "- wshub: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$( [[ -n $(git status --porcelain 2>/dev/null | head -n 1) ]] && echo ' (with uncommitted changes)'); peer: fastwebsockets on tokio current_thread (bench/peer)"
    echo "- Pinning: $PINNING; $RUNS run(s) per scenario, each against a freshly started server"
    echo "- Cells: median [min–max] over the runs; ratio = wshub median / peer median"
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
        echo "| metric | wshub | peer | wshub/peer |"
        echo "| --- | --- | --- | --- |"
        while IFS='|' read -r key label decimals better; do
            local_label=$label
            [[ $better == higher ]] && local_label="$label ↑"
            [[ $better == lower ]] && local_label="$label ↓"
            echo "| $local_label | $(cell wshub "$name" "$key" "$decimals") | $(cell peer "$name" "$key" "$decimals") | $(ratio "$name" "$key") |"
        done < <(metrics_for "$kind")
        for server in wshub peer; do
            if [[ -s $WORK/$server.$name.err ]]; then
                echo
                echo "$server n/a: $(sed 's/|/\\|/g' "$WORK/$server.$name.err")"
            fi
        done
        echo
    done
    echo "↑ higher is better, ↓ lower is better. Every echo is checked (order, length,"
    echo "content) and every broadcast run checks losses, duplicates and ordering; any"
    echo "failure makes that server's cells n/a, with the reason below the table."
} > "$RESULTS"

cat "$RESULTS"
