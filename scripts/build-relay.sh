#!/usr/bin/env bash
# Builds the release tether-relay: the command the relay image's build stage runs
# (packaging/relay.Dockerfile), and CI runs it too (scripts/test.sh), so the image's build is
# exercised where no container engine is.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p tether-relay
