#!/usr/bin/env bash
# Installs what building and testing Tether needs on Debian/Ubuntu: protoc (the .proto is
# compiled at build time), nats-server (tests and the demo run a real one), tmux (the
# `tetherctl shell` test types into a real terminal through it), and the system python3 and git
# the confined-command tests run (a confined command sees only system locations, so a python3
# under the home directory does not count), and Xvfb with xsetroot (x11-xserver-utils) for the
# desktop tests and `--virtual-desktop`, shellcheck (the installer is checked) and openssl (the
# mutual-TLS test makes its certificates), node and npm (the relay's /view page is built from
# npm packages) and chromium (the page's tests drive it headless); then the Python environment
# of the Python package's tests and the `tetherctl mcp` test client (a venv at target/pyenv, see
# below); and the development libraries the agent's optional xcap/enigo desktop backend links
# (`--features portable-desktop`: libxcb, PipeWire and SPA, Wayland, GBM and EGL, and libclang
# for the PipeWire bindings). Idempotent: installs only what is missing.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
[ -x /usr/bin/python3 ] || need+=(python3)
command -v git >/dev/null 2>&1 || need+=(git)
command -v Xvfb >/dev/null 2>&1 || need+=(xvfb xauth)
command -v xsetroot >/dev/null 2>&1 || need+=(x11-xserver-utils)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The benchmarks' baselines (tether-bench; CI runs its smoke): a process per desktop action
# (xdotool), and ssh, scp and rsync to a private loopback sshd.
command -v xdotool >/dev/null 2>&1 || need+=(xdotool)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v scp >/dev/null 2>&1 || need+=(openssh-client)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
# The relay's /view page is bundled from npm packages (scripts/build-web.sh) and tested in a
# real headless Chromium (tests/tests/viewer_page.rs).
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ -x /usr/lib/chromium/chromium ] || command -v chromium >/dev/null 2>&1 || need+=(chromium)
# The Python package (python/) is tested in a venv; Debian splits venv support out of python3.
/usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
# The xcap/enigo desktop backend (tests/tests/desktop_portable.rs, bench-desktop-backends) builds
# against these; pkg-config finds all but libclang (bindgen, for the PipeWire bindings).
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
for lib in xcb libpipewire-0.3 libspa-0.2 wayland-client gbm egl; do
  pkg-config --exists "$lib" 2>/dev/null && continue
  case $lib in
    xcb) need+=(libxcb1-dev) ;;
    libpipewire-0.3) need+=(libpipewire-0.3-dev) ;;
    libspa-0.2) need+=(libspa-0.2-dev) ;;
    wayland-client) need+=(libwayland-dev) ;;
    gbm) need+=(libgbm-dev) ;;
    egl) need+=(libegl-dev) ;;
  esac
done
# libclang itself: libclang-cpp (which other packages bring in) does not count.
compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null || need+=(libclang-dev)

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

# Python: a venv at target/pyenv (created if missing) holding the package (`pip install
# ./python`, reinstalled each run so it tests what is checked out) and its pinned test tools.
# Any python3 >= 3.10 will do: the system one first, else the one on PATH.
cd "$(dirname "$0")/.."
pyenv=target/pyenv
if [ ! -x "$pyenv/bin/python" ]; then
  py=""
  for candidate in /usr/bin/python3 python3; do
    if "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; then
      py=$candidate
      break
    fi
  done
  [ -n "$py" ] || { echo "setup: python3 >= 3.10 with venv is required" >&2; exit 1; }
  echo "setup: creating $pyenv with $py" >&2
  mkdir -p target
  "$py" -m venv "$pyenv"
fi
"$pyenv/bin/python" -m pip install -q --disable-pip-version-check -r python/requirements-dev.txt
"$pyenv/bin/python" -m pip install -q --disable-pip-version-check ./python
"$pyenv/bin/python" -m pip install -q --disable-pip-version-check -r tests/mcp/requirements.txt
