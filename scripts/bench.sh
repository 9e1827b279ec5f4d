#!/usr/bin/env bash
# Run a benchmark against DATABASE_URL or a throwaway Postgres: scripts/bench.sh admin_api
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/postgres.sh
ensure_database_url
case "${1:-admin_api}" in
    admin_api) cargo bench -p control-plane --bench admin_api ;;
    snapshots) cargo bench -p gateway-e2e --bench snapshots ;;
    spend) cargo bench -p control-plane --bench spend "${@:2}" ;;
    *) echo "unknown benchmark ${1}: admin_api | snapshots | spend" >&2; exit 2 ;;
esac
