#!/usr/bin/env bash
# Measures wshub's handover (kill -USR2: every connection handed to a new
# process) with 1,000, 10,000 and 19,000 idle subscribers, and prints a
# Markdown table. Per run: a fresh release wshub, `loadgen handover` dials
# the subscribers and an echo probe, publishes one message to all, sends
# SIGUSR2 to the server itself and keeps publishing (one message every
# EVERY seconds) for AFTER seconds; then the process that took over is
# stopped. See bench/README.md ("Handover") for what each column means.
#
# Environment knobs:
#   SIZES="1000 10000 19000"   subscriber counts, one row each
#   RUNS=N            runs per row (default 3)
#   EVERY=0.01 AFTER=3   loadgen handover --every / --after
#   SERVER_CPU=0 LOADGEN_CPU=1   cores to pin to (taskset -c)
#   WSHUB_BIN=FILE    run this wshub binary instead of the one built here
#   RESULTS=FILE      also write the table there
#
# Everything stays on loopback: the server listens on 127.0.0.1, and
# loadgen refuses any other target. The 19,000 subscribers fit loadgen's
# own process (under 20,000 open files); the server is another process.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

SIZES=${SIZES:-"1000 10000 19000"}
RUNS=${RUNS:-3}
EVERY=${EVERY:-0.01}
AFTER=${AFTER:-3}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
RESULTS=${RESULTS:-}
LOADGEN_TIMEOUT=${LOADGEN_TIMEOUT:-120}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

log() { printf '%s\n' "$*" >&2; }

log "building release binaries ..."
cargo build --release --quiet -p wshub -p wshub-loadgen
WSHUB_BIN=${WSHUB_BIN:-$CARGO_TARGET_DIR/release/wshub}
LOADGEN_BIN=$CARGO_TARGET_DIR/release/loadgen

ulimit -n "$(ulimit -Hn)"

PIN_SERVER=() PIN_LOADGEN=()
if command -v taskset >/dev/null && (( $(nproc) >= 2 )); then
    PIN_SERVER=(taskset -c "$SERVER_CPU")
    PIN_LOADGEN=(taskset -c "$LOADGEN_CPU")
    PINNING="server on CPU $SERVER_CPU (the new process inherits it), loadgen on CPU $LOADGEN_CPU (taskset)"
else
    PINNING="not pinned (needs taskset and 2 CPUs)"
fi

WORK=$(mktemp -d)
SERVER_PID= NEW_PID=
cleanup() {
    stop_servers
    rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"

# cell KEY < jsonl: the summary of KEY over the runs, or "–" if none did.
cell() {
    local s
    s=$(json_field "$1" | summarize 1)
    echo "${s:-–}"
}

# stop_pid PID: SIGTERM, then SIGKILL after 5 s. Only ever called with the
# server this script started or the process its log names as its successor.
stop_pid() {
    local pid=$1
    [[ -n $pid ]] || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

stop_servers() {
    stop_pid "${NEW_PID:-}"
    NEW_PID=
    if [[ -n ${SERVER_PID:-} ]]; then
        stop_pid "$SERVER_PID"
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}

# The server's log lines of a handover (see README.md, "Restarts").
STARTED="handover: started new process "
HANDED="handover: handed over "

# start_server: a fresh wshub on a free port; sets SERVER_PID and PORT.
start_server() {
    PORT=$(free_port) || { log "no free port found"; return 1; }
    cat > "$WORK/wshub.toml" <<TOML
max_connections = 100000
max_backlog_bytes = 4194304
ping_interval = "0s"
idle_timeout = "0s"

[[listener]]
address = "127.0.0.1:$PORT"

[[route]]
path = "/echo"
kind = "echo"

[[route]]
path = "/live"
kind = "broadcast"
TOML
    # info: the handover lines; per-connection lines are debug.
    RUST_LOG=info "${PIN_SERVER[@]}" "$WSHUB_BIN" --config "$WORK/wshub.toml" \
        > "$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        kill -0 "$SERVER_PID" 2>/dev/null \
            || { log "wshub exited at start: $(tail -c 300 "$WORK/server.log")"; return 1; }
        port_in_use "$PORT" && return 0
        sleep 0.1
    done
    log "wshub did not listen on 127.0.0.1:$PORT within 10 s"
    return 1
}


SLOT=0
FAILURES=()
for size in $SIZES; do
    : > "$WORK/rows.$size.jsonl"
    for run in $(seq 1 "$RUNS"); do
        log "handover of $size subscribers, run $run of $RUNS ..."
        start_server || { FAILURES+=("$size/$run: server did not start"); stop_servers; continue; }
        SLOT=$(( SLOT % 250 + 1 ))
        rc=0
        timeout --kill-after=5 $(( LOADGEN_TIMEOUT + 60 )) \
            "${PIN_LOADGEN[@]}" "$LOADGEN_BIN" handover \
            --url "ws://127.0.0.1:$PORT/live/handover" \
            --echo-url "ws://127.0.0.1:$PORT/echo" \
            --server-pid "$SERVER_PID" --conns "$size" \
            --every "$EVERY" --after "$AFTER" \
            --source-base "127.0.$SLOT.2" --timeout "$LOADGEN_TIMEOUT" \
            > "$WORK/out.txt" 2> "$WORK/err.txt" || rc=$?
        sed 's/^/    /' "$WORK/out.txt" >&2
        NEW_PID=$(sed -n "s/.*$STARTED\\([0-9]*\\).*/\\1/p" "$WORK/server.log" | head -n 1)
        handed=$(grep -F "$HANDED" "$WORK/server.log" | head -n 1 || true)
        [[ -z $handed ]] || log "    server: ${handed#*handover: }"
        ms=$(printf '%s' "$handed" | sed -n 's/.* in \([0-9.]*\) *ms.*/\1/p')
        if (( rc != 0 )) || [[ -z $ms ]]; then
            why=$(head -c 300 "$WORK/err.txt" | tr '\n' ' ')
            [[ -n $ms ]] || why="$why no handover line in the server's log: $( (grep -F 'handover' "$WORK/server.log" || true) | tail -n 2 | tr '\n' ' ')"
            FAILURES+=("$size/$run: $why")
            log "    failed: $why"
        else
            tail -n 1 "$WORK/out.txt" | sed "s/}\$/,\"handover_ms\":$ms}/" >> "$WORK/rows.$size.jsonl"
        fi
        stop_servers
    done
done

{
    echo "## Handover (kill -USR2): idle subscribers handed to a new process"
    echo
    echo "\`bench/handover.sh\` ($RUNS runs per row; a message published every ${EVERY} s from the signal on, for ${AFTER} s)"
    echo
    echo "| subscribers | handover, old process's log (ms) | SIGUSR2 to the held-up message's last receipt (ms) | held-up message, publish to last receipt (ms) | longest pause a subscriber saw (ms) | echo probe's longest round trip (ms) |"
    echo "| --- | --- | --- | --- | --- | --- |"
    for size in $SIZES; do
        f=$WORK/rows.$size.jsonl
        printf '| %s | %s | %s | %s | %s | %s |\n' "$size" \
            "$(cell handover_ms < "$f")" \
            "$(cell signal_to_held_ms < "$f")" \
            "$(cell held_ms < "$f")" \
            "$(cell pause_ms < "$f")" \
            "$(cell echo_max_ms < "$f")"
    done
    echo
    echo "- Cells: median [min–max] over the runs that succeeded; – = none did"
    echo "- Machine: $(nproc) CPUs, $(uname -sr); $PINNING; $("$WSHUB_BIN" --version 2>/dev/null | head -n 1)"
    for failure in "${FAILURES[@]}"; do
        echo "- Failed run $failure"
    done
} > "$WORK/table.md"
cat "$WORK/table.md"
if [[ -n $RESULTS ]]; then
    cp "$WORK/table.md" "$RESULTS"
fi
