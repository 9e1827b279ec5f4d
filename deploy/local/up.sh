#!/usr/bin/env bash
# Run the gateway locally on its defaults: Postgres (yours via DATABASE_URL, else a throwaway cluster from the
# local Postgres binaries) and the control plane's admin API on 127.0.0.1:8081.
# The data plane joins this script when it lands (see ARCHITECTURE.md).
# Ctrl-C stops everything; a throwaway cluster is deleted.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/postgres.sh
ensure_database_url

export GATEWAY_ADMIN_TOKEN=${GATEWAY_ADMIN_TOKEN:-dev-admin-token}
# A fixed development key: replace it in any real deployment (openssl rand -hex 32).
export GATEWAY_SECRET_KEY=${GATEWAY_SECRET_KEY:-000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f}
export GATEWAY_ADMIN_ADDR=${GATEWAY_ADMIN_ADDR:-127.0.0.1:8081}
case "$DATABASE_URL" in
    # The throwaway cluster's default database is `postgres`; keep the gateway's tables in their own.
    */postgres) DATABASE_URL="${DATABASE_URL%/postgres}/gateway" ;;
esac
export DATABASE_URL

cargo build --release -p control-plane
echo "admin API: http://$GATEWAY_ADMIN_ADDR/admin/v1/  (Authorization: Bearer $GATEWAY_ADMIN_TOKEN)" >&2
# Not `exec`: the shell must outlive the server to stop a throwaway cluster on exit.
./target/release/control-plane serve
