#!/usr/bin/env bash
# Builds the relay's /view page (web/) into web/dist: `npm ci` from the committed lockfile, then
# esbuild. Run it before building the relay: relay/build.rs embeds web/dist, and a relay built
# without it answers /view with 503 naming this script. Needs node and npm (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/../web"
npm ci --no-audit --no-fund --loglevel=error
node build.mjs
echo "build-web: the /view page is in web/dist" >&2
