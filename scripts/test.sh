#!/usr/bin/env bash
# Sets up and runs the whole test suite: unit tests and end-to-end tests against a real
# nats-server and the real binaries, then the `tetherctl mcp` test (a Python MCP client).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --bins --locked
cargo test --workspace --locked -- "$@"
PYTHONDONTWRITEBYTECODE=1 target/pyenv/bin/python -m pytest -p no:cacheprovider -q tests/mcp
