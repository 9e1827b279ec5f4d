#!/usr/bin/env bash
# Run a benchmark against DATABASE_URL or a throwaway Postgres: scripts/bench.sh admin_api
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/postgres.sh
ensure_database_url
cargo bench -p control-plane --bench "${1:-admin_api}"
