#!/usr/bin/env bash
# Builds the release archive dist/tether-<version>-<target>.tar.gz (tether-agent, tether-relay,
# tetherctl, README.md, install.sh) and its .sha256, which packaging/install.sh verifies.
#   scripts/release.sh                     # release profile: LTO, stripped
#   BIN_DIR=target/debug scripts/release.sh   # package binaries already built (the installer test)
#   OUT=/tmp/dist TARGET=... scripts/release.sh
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
target=${TARGET:-$(rustc -vV | sed -n 's/^host: //p')}
out=${OUT:-dist}
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --locked -p tether-agent -p tether-relay -p tether-client --bins
  BIN_DIR=target/release
fi
name="tether-$version-$target"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$name" "$out"
for bin in tether-agent tether-relay tetherctl; do
  install -m 0755 "$BIN_DIR/$bin" "$stage/$name/$bin"
done
cp README.md packaging/install.sh "$stage/$name/"
tar -C "$stage" -czf "$out/$name.tar.gz" "$name"
(cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
ls -l "$stage/$name" >&2
echo "$out/$name.tar.gz"
