#!/usr/bin/env bash
# Run the gateway locally on its defaults: Postgres (yours via DATABASE_URL, else a throwaway cluster from the
# local Postgres binaries), the control plane (admin API 127.0.0.1:8081, gRPC 127.0.0.1:8082) and one data plane
# (127.0.0.1:8080) subscribed to it. Ctrl-C stops everything; a throwaway cluster is deleted.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/postgres.sh
ensure_database_url

export GATEWAY_ADMIN_TOKEN=${GATEWAY_ADMIN_TOKEN:-dev-admin-token}
export GATEWAY_NODE_TOKEN=${GATEWAY_NODE_TOKEN:-dev-node-token}
# A fixed development key: replace it in any real deployment (openssl rand -hex 32).
export GATEWAY_SECRET_KEY=${GATEWAY_SECRET_KEY:-000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f}
export GATEWAY_ADMIN_ADDR=${GATEWAY_ADMIN_ADDR:-127.0.0.1:8081}
export GATEWAY_GRPC_ADDR=${GATEWAY_GRPC_ADDR:-127.0.0.1:8082}
export GATEWAY_LISTEN_ADDR=${GATEWAY_LISTEN_ADDR:-127.0.0.1:8080}
export GATEWAY_CONTROL_PLANE=${GATEWAY_CONTROL_PLANE:-http://$GATEWAY_GRPC_ADDR}
export GATEWAY_STATE_DIR=${GATEWAY_STATE_DIR:-.local/data-plane}
case "$DATABASE_URL" in
    # The throwaway cluster's default database is `postgres`; keep the gateway's tables in their own.
    */postgres) DATABASE_URL="${DATABASE_URL%/postgres}/gateway" ;;
esac
export DATABASE_URL

cargo build --release -p control-plane -p data-plane

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    stop_throwaway_postgres
}
trap cleanup EXIT INT TERM

./target/release/control-plane serve &
pids+=($!)
./target/release/data-plane serve &
pids+=($!)
cat >&2 <<MSG
admin API:  http://$GATEWAY_ADMIN_ADDR/admin/v1/   (Authorization: Bearer $GATEWAY_ADMIN_TOKEN)
data plane: http://$GATEWAY_LISTEN_ADDR/readyz     (ready once it holds a snapshot)
fleet:      curl -H 'Authorization: Bearer $GATEWAY_ADMIN_TOKEN' http://$GATEWAY_ADMIN_ADDR/admin/v1/fleet
MSG
wait -n "${pids[@]}"
