#!/usr/bin/env bash
# Run every test: the README's test command and what CI runs.
# Needs a Rust toolchain, Python 3, Node.js 20 with npm, and PostgreSQL binaries (or DATABASE_URL pointing at a
# server).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/postgres.sh
ensure_database_url

# A local venv for the Python tools the end-to-end tests run: the SDK conformance suites (the official `openai`
# and `anthropic` packages), the admin API's fuzz run and document validator (schemathesis, openapi-spec-validator),
# deploy/'s validators, and botocore, with which the Bedrock mock (tests/providers/) checks SigV4 signatures.
requirements=(tests/sdk/requirements.txt tests/admin_api/requirements.txt deploy/requirements.txt tests/providers/requirements.txt)
if [ ! -x .venv/bin/python ] \
    || ! .venv/bin/python -c 'import openai, anthropic, pytest, schemathesis, openapi_spec_validator, kubernetes_validate, check_jsonschema, botocore' 2>/dev/null \
    || ! cat "${requirements[@]}" | cmp -s - .venv/requirements.installed; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "${requirements[@]/#/--requirement=}"
    cat "${requirements[@]}" > .venv/requirements.installed
fi

# The official `openai` Node SDK for its smoke suite (tests/node), exactly as locked.
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error)

# The deployment artifacts (chart, compose file, Dockerfile, systemd units), validated offline.
deploy/check.sh

# The end-to-end tests run the real binaries.
cargo build --workspace --bins

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    echo "cargo-nextest not found; using cargo test (cargo install cargo-nextest --locked for faster runs)" >&2
    cargo test --workspace --no-fail-fast "$@"
fi
