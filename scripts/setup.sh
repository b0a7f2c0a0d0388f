#!/usr/bin/env bash
# Installs what building and testing Tether needs on Debian/Ubuntu: protoc (the .proto is
# compiled at build time), nats-server (tests and the demo run a real one), tmux (the
# `tetherctl shell` test types into a real terminal through it), and the system python3 and git
# the confined-command tests run (a confined command sees only system locations, so a python3
# under the home directory does not count), and Xvfb with xsetroot (x11-xserver-utils) for the
# desktop tests and `--virtual-desktop`, and python3-venv for the Python environment at
# target/pyenv (the `tetherctl mcp` test client, tests/mcp). Idempotent: installs only what is
# missing.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
[ -x /usr/bin/python3 ] || need+=(python3)
/usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
command -v git >/dev/null 2>&1 || need+=(git)
command -v Xvfb >/dev/null 2>&1 || need+=(xvfb xauth)
command -v xsetroot >/dev/null 2>&1 || need+=(x11-xserver-utils)

if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: please install: ${need[*]} (no apt-get here)" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

command -v cargo >/dev/null 2>&1 || { echo "setup: Rust (cargo) is required: https://rustup.rs" >&2; exit 1; }

# The Python environment of the tests that use Python clients.
cd "$(dirname "$0")/.."
[ -x target/pyenv/bin/python ] || python3 -m venv target/pyenv
target/pyenv/bin/pip install -q -r tests/mcp/requirements.txt
