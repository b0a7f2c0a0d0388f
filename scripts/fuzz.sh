#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ with libFuzzer's coverage instrumentation and runs each one.
# Stable Rust: these are the flags cargo-fuzz passes, without the sanitizer (which needs
# nightly); `--target` keeps them off build scripts and proc macros. Every committed regression
# input (fuzz/regressions/<target>/) is replayed first; then each target runs for SECONDS
# (default 60) from its seed corpus (fuzz/corpus/<target>/), writing what it finds to a scratch
# directory and any crashing input to fuzz/artifacts/<target>/. Exit status: non-zero on a crash.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(control_request relay_frames tokens)

host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares"
cargo build --locked --release --target "$host" "${targets[@]/#/--bin=}"

# Corpus growth and the targets' own scratch roots (via TMPDIR) go in one directory, in memory
# where possible, removed on exit: a fuzzer stopped by its time limit cleans up nothing itself.
scratch=$(mktemp -d -p /dev/shm tether-fuzz.XXXXXX 2>/dev/null || mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir "$scratch/tmp"
export TMPDIR="$scratch/tmp"
for target in "${targets[@]}"; do
    bin="target/$host/release/$target"
    if compgen -G "regressions/$target/*" >/dev/null; then
        echo "== $target: replaying regressions"
        "$bin" regressions/"$target"/*
    fi
    echo "== $target: fuzzing for ${seconds}s"
    mkdir -p "$scratch/$target" "artifacts/$target"
    "$bin" -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$target/" "$scratch/$target" "corpus/$target"
done
