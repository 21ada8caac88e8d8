#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), starting from the
# committed seeds. Exits 1 if any target finds a crash, a failed invariant,
# a timeout or an out-of-memory (the input is saved under
# fuzz/artifacts/<target>/), 2 if a target does not build.
#
#     fuzz/run.sh [SECONDS] [TARGET...]
#
# cargo-fuzz builds with `-Zsanitizer=address`, which rustc only accepts on
# the nightly channel. RUSTC_BOOTSTRAP=1 lets a stable toolchain accept it,
# so no nightly install is needed. It is set for this script only, never for
# normal builds of the crate.
set -euo pipefail

SECONDS_PER_TARGET="${1:-60}"
shift || true
cd "$(dirname "$0")"

export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# Cargo caches the compiler's answers to its probes, failures included; a
# probe that failed in an earlier run without RUSTC_BOOTSTRAP would fail
# this build too.
rm -f target/.rustc_info.json

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# Longest input per target: room for a request head past MAX_HEAD_LEN (8 KiB)
# where heads are parsed, a few KiB of frames otherwise.
max_len() {
    case "$1" in
        handshake | publish | token) echo 20000 ;;
        *) echo 8192 ;;
    esac
}

# Build every target first, so a build failure is not mistaken for a finding.
for target in "${targets[@]}"; do
    if ! cargo fuzz build "$target"; then
        echo "build of fuzz target $target failed" >&2
        exit 2
    fi
done

failed=()
for target in "${targets[@]}"; do
    corpus="corpus/$target"
    mkdir -p "$corpus"
    cp -n "seeds/$target"/* "$corpus"/ 2>/dev/null || true
    echo "=== $target: ${SECONDS_PER_TARGET}s"
    if ! cargo fuzz run "$target" "$corpus" -- \
        -max_total_time="$SECONDS_PER_TARGET" \
        -max_len="$(max_len "$target")" \
        -timeout=10 \
        -print_final_stats=1; then
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "findings in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "no findings in: ${targets[*]}"
