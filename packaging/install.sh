#!/bin/sh
# Installs Tether (tether-agent, tetherctl, tether-relay) from a release archive, after checking
# it against its published SHA-256; optionally enrolls this machine and installs the service.
#
#   sh install.sh ARCHIVE_OR_URL [--sha256 FILE_OR_URL] [--prefix DIR]
#                 [--enroll BUNDLE|-] [--name NAME] [--service]
#
# ARCHIVE_OR_URL is tether-<version>-<target>.tar.gz (a path or an https URL); its checksum
# comes from --sha256, else from the same place with ".sha256" appended. A mismatch, or an
# archive built for another OS or architecture, is refused and nothing is installed. Binaries go
# to --prefix, else ~/.local/bin (or /usr/local/bin as root).
set -eu

die() {
  echo "install.sh: $*" >&2
  exit 1
}

archive=""
sha=""
prefix=""
bundle=""
name=""
service=0
while [ $# -gt 0 ]; do
  case "$1" in
    --sha256) sha=${2:?--sha256 needs a value}; shift 2 ;;
    --prefix) prefix=${2:?--prefix needs a value}; shift 2 ;;
    --enroll) bundle=${2:?--enroll needs a bundle or -}; shift 2 ;;
    --name) name=${2:?--name needs a value}; shift 2 ;;
    --service) service=1; shift ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) [ -z "$archive" ] || die "one archive only"; archive=$1; shift ;;
  esac
done
[ -n "$archive" ] || die "give the release archive (path or URL); see --help"
[ -n "$sha" ] || sha="$archive.sha256"
if [ -z "$prefix" ]; then
  if [ "$(id -u)" -eq 0 ]; then prefix=/usr/local/bin; else prefix="$HOME/.local/bin"; fi
fi

# What this machine is, as Rust names targets.
case "$(uname -s)" in
  Linux) os=unknown-linux ;;
  Darwin) os=apple-darwin ;;
  *) die "unsupported OS $(uname -s)" ;;
esac
case "$(uname -m)" in
  x86_64 | amd64) arch=x86_64 ;;
  aarch64 | arm64) arch=aarch64 ;;
  *) die "unsupported architecture $(uname -m)" ;;
esac
case "$(basename "$archive")" in
  tether-*-"$arch"-"$os"*.tar.gz) ;;
  *) die "$(basename "$archive") is not a Tether archive for $arch-$os" ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

fetch() { # fetch SOURCE DEST
  case "$1" in
    http://* | https://*) curl -fsSL --proto '=https,http' -o "$2" "$1" || die "cannot download $1" ;;
    *) cp "$1" "$2" 2>/dev/null || die "cannot read $1" ;;
  esac
}
fetch "$archive" "$work/archive.tar.gz"
fetch "$sha" "$work/archive.sha256"

want=$(awk 'NR == 1 { print $1 }' "$work/archive.sha256")
if command -v sha256sum >/dev/null 2>&1; then
  got=$(sha256sum "$work/archive.tar.gz" | awk '{ print $1 }')
else
  got=$(shasum -a 256 "$work/archive.tar.gz" | awk '{ print $1 }')
fi
if [ -z "$want" ] || [ "$got" != "$want" ]; then
  die "checksum mismatch for $(basename "$archive") (expected ${want:-nothing}, got $got): refusing to install"
fi

tar -xzf "$work/archive.tar.gz" -C "$work" || die "cannot unpack the archive"
dir=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'tether-*' | head -n 1)
[ -n "$dir" ] || die "the archive holds no tether-* directory"
mkdir -p "$prefix"
for bin in tether-agent tetherctl tether-relay; do
  [ -f "$dir/$bin" ] || die "the archive lacks $bin"
  install -m 0755 "$dir/$bin" "$prefix/$bin"
done
echo "installed tether-agent, tetherctl and tether-relay in $prefix"
case ":$PATH:" in
  *":$prefix:"*) ;;
  *) echo "note: $prefix is not on your PATH" ;;
esac

if [ -n "$bundle" ]; then
  set -- enroll
  [ -z "$name" ] || set -- "$@" --name "$name"
  if [ "$bundle" = "-" ]; then
    "$prefix/tether-agent" "$@" -
  else
    # On stdin, so the bundle's secrets stay out of the process list.
    printf '%s\n' "$bundle" | "$prefix/tether-agent" "$@" -
  fi
fi
if [ "$service" -eq 1 ]; then
  [ -n "$name" ] || die "--service needs --name (the enrollment's name)"
  "$prefix/tether-agent" service install --name "$name"
fi
