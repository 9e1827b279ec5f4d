#!/usr/bin/env bash
# The data plane's throughput against the cheapest possible proxy hop, in one run on this machine (issue 17,
# docs/benchmarks.md): `scripts/bench-throughput.sh`.
#
# - upstream: nginx serving fixed OpenAI answers (scripts/bench/chat.json; the SSE stream scripts/bench/chat.sse
#   under /sse/), keep-alive;
# - ceiling: a do-nothing nginx proxy hop in front of it (keep-alive to the upstream);
# - the gateway as deploy/local/up.sh runs it: control plane and data plane (release build), metering and the spend
#   ledger on, configured through the admin API.
# `oha` (closed loop, keep-alive) sends the same requests direct, via the nginx hop and via the data plane: C=1
# (p50 and the latency each hop adds), C=32 and C=128 (req/s as a share of direct) and C=32 streaming. Then CPU
# seconds per request from /proc under a fixed C=32 load of the gateway: data plane, control plane, the control
# plane's Postgres sessions, the upstream nginx; and the data plane's system calls and context switches per request
# (perf's tracepoints, where available). Last, the spend ledger is reconciled: one event per request sent.
#
# Needs nginx (`apt-get install nginx-light`, done here when missing and run as root) and oha (`cargo install oha
# --locked --no-default-features --features native-tls`, likewise, with Debian's libssl-dev: its default TLS
# backend compiles aws-lc, minutes on this machine); Postgres as scripts/lib/postgres.sh finds it (DATABASE_URL or
# a throwaway cluster).
# Settings: DURATION (seconds per phase, default 10), C1_REQUESTS (default 2000), CARGO_TARGET_DIR (default target),
# DATA_PLANE and CONTROL_PLANE (binaries to measure instead of the ones built, e.g. copies kept from before a change).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/postgres.sh

DURATION=${DURATION:-10}
C1_REQUESTS=${C1_REQUESTS:-2000}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
DATA_PLANE=${DATA_PLANE:-$TARGET_DIR/release/data-plane}
CONTROL_PLANE=${CONTROL_PLANE:-$TARGET_DIR/release/control-plane}

if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    echo "nginx is missing: installing Debian's nginx-light" >&2
    apt-get install -y -qq nginx-light >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if ! command -v oha >/dev/null; then
    echo "oha is missing: cargo install oha --locked --no-default-features --features native-tls" >&2
    if ! pkg-config --exists openssl 2>/dev/null; then
        apt-get install -y -qq libssl-dev pkg-config >/dev/null \
            || { apt-get update -qq && apt-get install -y -qq libssl-dev pkg-config >/dev/null; }
    fi
    cargo install oha --locked --no-default-features --features native-tls
fi

ensure_database_url
nice -n 10 cargo build --release -p control-plane -p data-plane

work=$(mktemp -d /tmp/gateway-throughput.XXXXXX)
pids=()
database=gateway_throughput_$$
admin_url_db=${DATABASE_URL%/*}
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for conf in upstream hop; do
        [ -f "$work/$conf.pid" ] && kill "$(cat "$work/$conf.pid")" 2>/dev/null || true
    done
    psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$work"
    stop_throwaway_postgres
}
trap cleanup EXIT INT TERM

up_port=$(free_port); hop_port=$(free_port); admin_port=$(free_port); grpc_port=$(free_port); dp_port=$(free_port)

# nginx: the answers inline (`return` serves any method, POST included, and discards the body).
nginx_quote() { python3 -c 'import sys; print(sys.stdin.read().replace("\\", "\\\\").replace("\x27", "\\\x27"), end="")'; }
chat_json=$(nginx_quote < scripts/bench/chat.json)
chat_sse=$(nginx_quote < scripts/bench/chat.sse)
nginx_conf() { # name port body
    cat <<CONF
worker_processes auto;
pid $work/$1.pid;
error_log $work/$1.error.log warn;
daemon on;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/$1.body;
    proxy_temp_path $work/$1.proxy;
    fastcgi_temp_path $work/$1.fastcgi;
    uwsgi_temp_path $work/$1.uwsgi;
    scgi_temp_path $work/$1.scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$2 backlog=4096;
$3
    }
}
CONF
}
nginx_conf upstream "$up_port" "
        location = /v1/chat/completions { default_type application/json; return 200 '$chat_json'; }
        location = /sse/v1/chat/completions { default_type text/event-stream; return 200 '$chat_sse'; }" \
    > "$work/upstream.conf"
nginx_conf hop "$hop_port" "
        location / { proxy_pass http://gateway_upstream; proxy_http_version 1.1; proxy_set_header Connection \"\";
                     proxy_buffering off; }
    }
    upstream gateway_upstream { server 127.0.0.1:$up_port; keepalive 256; " \
    > "$work/hop.conf"
"$NGINX" -c "$work/upstream.conf" -e "$work/upstream.error.log"
"$NGINX" -c "$work/hop.conf" -e "$work/hop.error.log"

# The gateway, as deploy/local/up.sh runs it, in its own database.
psql -q "$DATABASE_URL" -c "CREATE DATABASE $database" >/dev/null
export GATEWAY_ADMIN_TOKEN=bench-admin-token GATEWAY_NODE_TOKEN=bench-node-token
export GATEWAY_SECRET_KEY=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
export GATEWAY_ADMIN_ADDR=127.0.0.1:$admin_port GATEWAY_GRPC_ADDR=127.0.0.1:$grpc_port
export GATEWAY_LISTEN_ADDR=127.0.0.1:$dp_port GATEWAY_CONTROL_PLANE=http://127.0.0.1:$grpc_port
export GATEWAY_STATE_DIR=$work/data-plane RUST_LOG=${RUST_LOG:-warn}
DATABASE_URL="$admin_url_db/$database" "$CONTROL_PLANE" serve 2> "$work/control-plane.log" &
cp_pid=$!; pids+=("$cp_pid")
"$DATA_PLANE" serve 2> "$work/data-plane.log" &
dp_pid=$!; pids+=("$dp_pid")

admin() { # method path [body]
    curl -sS -f -X "$1" -H "Authorization: Bearer $GATEWAY_ADMIN_TOKEN" -H 'content-type: application/json' \
        "http://127.0.0.1:$admin_port/admin/v1$2" ${3:+-d "$3"}
}
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin_port/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
for backend in json:/v1 sse:/sse/v1; do
    admin POST /backends "{\"name\":\"${backend%%:*}\",\"kind\":\"openai\",\"base_url\":\"http://127.0.0.1:$up_port${backend#*:}\",\"auth\":{\"type\":\"none\"}}" >/dev/null
done
for model in m:json ms:sse; do
    admin POST /models "{\"name\":\"${model%%:*}\",\"backend\":\"${model#*:}\",\"upstream_model\":\"mock-model\",\"capabilities\":{\"chat\":true},\"pricing\":{\"input\":\"1\",\"output\":\"2\"}}" >/dev/null
done
for alias in gpt:m gpt-stream:ms; do
    admin POST /aliases "{\"name\":\"${alias%%:*}\",\"candidates\":[{\"model\":\"${alias#*:}\"}]}" >/dev/null
done
key=$(admin POST /keys '{"name":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
version=$(admin GET /fleet | python3 -c 'import json,sys; print(json.load(sys.stdin)["config_version"])')
for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$dp_port/readyz" | grep -q "\"snapshot_version\":$version" && break
    sleep 0.2
done
curl -sf "http://127.0.0.1:$dp_port/readyz" | grep -q "\"snapshot_version\":$version" \
    || { echo "the data plane never served version $version" >&2; tail "$work/data-plane.log" >&2; exit 1; }

body() { echo "{\"model\":\"$1\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hello\"}],\"stream\":$2}"; }
# oha's JSON summary: requests/s, p50 in microseconds, successful requests.
load() { # url model stream concurrency [auth]
    local args=(--no-tui --output-format json -m POST -H 'content-type: application/json' -d "$(body "$2" "$3")"
        -c "$4")
    [ -n "${5:-}" ] && args+=(-H "Authorization: Bearer $5")
    if [ "$4" = 1 ]; then args+=(-n "$C1_REQUESTS"); else args+=(-z "${DURATION}s"); fi
    oha "${args[@]}" "$1" | python3 -c '
import json, sys
s = json.load(sys.stdin)
ok = s["statusCodeDistribution"].get("200", 0)
total = sum(s["statusCodeDistribution"].values())
assert ok == total and ok > 0, s["statusCodeDistribution"]
print("%.1f %.1f %d" % (s["summary"]["requestsPerSec"], s["latencyPercentiles"]["p50"] * 1e6, ok))'
}
direct=http://127.0.0.1:$up_port
hop=http://127.0.0.1:$hop_port
gateway=http://127.0.0.1:$dp_port
phase() { # label stream concurrency -> "direct hop gateway" figures
    local prefix="" model=gpt
    [ "$2" = true ] && prefix=/sse && model=gpt-stream
    read -r d_rps d_p50 _ < <(load "$direct$prefix/v1/chat/completions" "$model" "$2" "$3")
    read -r h_rps h_p50 _ < <(load "$hop$prefix/v1/chat/completions" "$model" "$2" "$3")
    read -r g_rps g_p50 _ < <(load "$gateway/v1/chat/completions" "$model" "$2" "$3" "$key")
    printf '%s %s %s %s %s %s %s\n' "$1" "$d_rps" "$d_p50" "$h_rps" "$h_p50" "$g_rps" "$g_p50" >> "$work/figures"
}
echo "warming up" >&2
load "$gateway/v1/chat/completions" gpt false 8 "$key" >/dev/null
load "$gateway/v1/chat/completions" gpt-stream true 8 "$key" >/dev/null
for spec in "c1 false 1" "c32 false 32" "c128 false 128" "c32-stream true 32"; do
    read -r label stream concurrency <<< "$spec"
    echo "phase $label" >&2
    phase "$label" "$stream" "$concurrency"
done

# CPU seconds per request from /proc under a fixed C=32 load of the gateway.
ticks=$(getconf CLK_TCK)
cpu_of() { # pids... -> clock ticks used (utime + stime)
    local total=0 pid
    for pid in "$@"; do
        [ -r "/proc/$pid/stat" ] || continue
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}
pg_pids=$(psql -At "$DATABASE_URL" -c "SELECT pid FROM pg_stat_activity WHERE datname = '$database'" | tr '\n' ' ')
nginx_pids=$(pgrep -P "$(cat "$work/upstream.pid")" | tr '\n' ' ')
# The data plane's system calls and context switches in that phase, where perf can count them (tracepoints).
perf_pid=""
if command -v perf >/dev/null && perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
    perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$dp_pid" -o "$work/dp.perf" &
    perf_pid=$!
else
    echo "perf cannot count system calls here: the table goes without them" >&2
fi
before=("$(cpu_of "$dp_pid")" "$(cpu_of "$cp_pid")" "$(cpu_of $pg_pids)" "$(cpu_of $nginx_pids)")
read -r cpu_rps _ cpu_ok < <(load "$gateway/v1/chat/completions" gpt false 32 "$key")
if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
sleep 2 # the last spend batches reach the ledger
after=("$(cpu_of "$dp_pid")" "$(cpu_of "$cp_pid")" "$(cpu_of $pg_pids)" "$(cpu_of $nginx_pids)")

# The ledger reconciles: every request the gateway answered left exactly one spend event.
expected=$(curl -sf "http://127.0.0.1:$dp_port/metrics" | awk '/^gateway_requests_total/ {s += $NF} END {printf "%d", s}')
ledger=0
for _ in $(seq 60); do
    ledger=$(psql -At "$admin_url_db/$database" -c "SELECT count(*) FROM spend_events")
    [ "$ledger" -ge "$expected" ] && break
    sleep 1
done

python3 - "$work/figures" "$ticks" "$cpu_ok" "$cpu_rps" "$expected" "$ledger" "${before[@]}" "${after[@]}" \
    "$work/dp.perf" <<'PY'
import sys
figures, ticks, ok, rps, expected, ledger = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
before, after = list(map(int, sys.argv[7:11])), list(map(int, sys.argv[11:15]))
perf_file = sys.argv[15]
rows = {}
for line in open(figures):
    label, *values = line.split()
    rows[label] = list(map(float, values))
print("| load | direct | nginx hop | data plane |")
print("|---|---|---|---|")
d, dp50, h, hp50, g, gp50 = rows["c1"]
print(f"| C=1, p50 (added) | {dp50:.0f} µs | +{hp50 - dp50:.0f} µs | +{gp50 - dp50:.0f} µs |")
print(f"| C=1, req/s as a share of direct | 1.00 ({d:.0f}/s) | {h / d:.2f} | {g / d:.2f} |")
for label, name in [("c32", "C=32"), ("c128", "C=128"), ("c32-stream", "C=32 streaming")]:
    d, _, h, _, g, _ = rows[label]
    print(f"| {name}, req/s as a share of direct | 1.00 ({d:.0f}/s) | {h / d:.2f} | {g / d:.2f} |")
print()
print(f"CPU per request under C=32 through the data plane ({ok} requests, {rps:.0f}/s):")
for name, b, a in zip(["data plane", "control plane", "Postgres (its sessions)", "upstream nginx"], before, after):
    print(f"  {name:<24} {(a - b) / ticks / ok * 1e6:7.1f} µs")
try:
    counts = {}
    for line in open(perf_file):
        fields = line.strip().split(",")
        if len(fields) > 2 and fields[0].isdigit():
            counts[fields[2]] = int(fields[0])
    print(f"data plane per request: {counts['raw_syscalls:sys_enter'] / ok:.1f} system calls, "
          f"{counts['context-switches'] / ok:.2f} context switches")
except (OSError, KeyError):
    pass
print()
state = "reconciles" if ledger == expected else "DOES NOT reconcile"
print(f"spend ledger: {ledger} events for {expected} requests answered by the data plane: {state}")
sys.exit(0 if ledger == expected else 1)
PY
