#!/usr/bin/env bash
# Instructions per request, without timing noise (this machine has no hardware counters): the fixed in-process
# request loop (bench-harness/src/main.rs) under `valgrind --tool=callgrind`, run for SHORT and LONG
# requests; (total(LONG) - total(SHORT)) / (LONG - SHORT) cancels start-up (the tokenizer's load), warm-up and
# shutdown. The same for the loop straight to its upstream (`--direct`) gives the client's and upstream's share;
# the gateway's own figure is the difference. `scripts/callgrind-requests.sh [--stream]`; docs/benchmarks.md.
# Needs valgrind (`apt-get install valgrind`). Settings: SHORT (default 200), LONG (default 1200),
# CARGO_TARGET_DIR (default target), REQUEST_LOOP.
set -euo pipefail
cd "$(dirname "$0")/.."
SHORT=${SHORT:-200}
LONG=${LONG:-1200}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
if ! command -v valgrind >/dev/null; then
    echo "valgrind is missing: installing Debian's valgrind" >&2
    apt-get install -y -qq valgrind >/dev/null
fi
# REQUEST_LOOP=path measures an already built loop (e.g. a copy kept from before a change) instead.
if [ -z "${REQUEST_LOOP:-}" ]; then
# Built with the gateway's binaries so that features unify as in scripts/bench-throughput.sh's build (shared artifacts).
nice -n 10 cargo build --release -p control-plane -p data-plane -p bench-harness >&2
fi
binary=${REQUEST_LOOP:-$TARGET_DIR/release/request-loop}
work=$(mktemp -d /tmp/gateway-callgrind.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Total instructions of one run (every thread).
instructions() { # requests [args...]
    local out=$work/callgrind.out
    valgrind --tool=callgrind --callgrind-out-file="$out" "$binary" --requests "$@" >/dev/null 2>"$work/valgrind.log" \
        || { cat "$work/valgrind.log" >&2; return 1; }
    awk '/^summary:|^totals:/ {print $2; exit}' "$out"
}
per_request() { # [args...]
    local short long
    short=$(instructions "$SHORT" "$@")
    long=$(instructions "$LONG" "$@")
    echo $(( (long - short) / (LONG - SHORT) ))
}
mode=non-streaming
[ "${1:-}" = --stream ] && mode=streaming
direct=$(per_request --direct "$@")
gateway=$(per_request "$@")
echo "instructions per $mode request: through the data plane $gateway, direct $direct, the data plane's own $((gateway - direct))"
