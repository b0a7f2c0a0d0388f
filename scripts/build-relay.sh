#!/usr/bin/env bash
# Builds the release tether-relay: the command the relay image's build stage runs
# (packaging/relay.Dockerfile), and CI runs it too (scripts/test.sh), so the image's build is
# exercised where no container engine is. The /view page is embedded when web/dist exists
# (scripts/build-web.sh; the image builds it in a node stage, scripts/test.sh before this).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p tether-relay
