#!/usr/bin/env bash
# Sets up and runs the whole test suite: unit tests and end-to-end tests against a real
# nats-server and the real binaries, then the Python package's (its generated protobuf code must
# match proto/proto/tether.proto, and its pytest suite runs against the same binaries) and the
# `tetherctl mcp` test (a Python MCP client); last, each fuzz target for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-web.sh     # before the relay is built: it embeds web/dist (the /view page)
# The agent with the xcap/enigo desktop backend (tests/tests/desktop_portable.rs runs it): built
# first in the same target dir (it shares every other dependency) and kept beside the default
# binary; the workspace build below puts the default `tether-agent` back in place.
cargo build -p tether-agent --features portable-desktop --locked
cp target/debug/tether-agent target/debug/tether-agent-portable
cargo build --workspace --bins --locked
cargo test --workspace --locked -- "$@"
cargo test -p tether-agent --features portable-desktop --locked --lib -- ops::desktop
scripts/build-relay.sh   # the relay image's build stage (packaging/relay.Dockerfile)
target/pyenv/bin/python python/scripts/gen_proto.py --check
target/pyenv/bin/python -m pytest python/tests -q
PYTHONDONTWRITEBYTECODE=1 target/pyenv/bin/python -m pytest -p no:cacheprovider -q tests/mcp
scripts/fuzz.sh "${TETHER_FUZZ_SECONDS:-45}"   # coverage-guided fuzzing, time-boxed per target
