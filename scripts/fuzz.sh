#!/usr/bin/env bash
# Build the fuzz targets in fuzz/ with libFuzzer and run each for SECONDS
# (default 20); fails if any target crashes (a panic, a failed assertion,
# a timeout or running out of memory). Works on a stable toolchain: the
# coverage instrumentation cargo-fuzz asks for is made of stable -C flags,
# and no sanitizer is used (safe Rust; a panic is the crash we look for).
#
#   scripts/fuzz.sh [SECONDS]
#
# A crashing input is kept in fuzz/artifacts/TARGET/; replay it with
# `fuzz/target/TRIPLE/release/TARGET fuzz/artifacts/TARGET/crash-…`.
# Inputs found are kept in a temporary corpus; the seeds in
# fuzz/corpus/TARGET/ are read, never written.
set -euo pipefail

SECONDS_PER_TARGET="${1:-20}"
# Each target: the one in fuzz/Cargo.toml.
TARGETS=(raft_requests api_requests tokens)
# Per input: a run longer than this is a hang; memory above this a leak.
INPUT_TIMEOUT_S=10
RSS_LIMIT_MB=2048
# Inputs longer than this are not tried: the routes' bodies are bounded,
# and short inputs explore the decoders faster.
INPUT_BYTES_MAX=65536

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"
triple="$(rustc -vV | sed -n 's/^host: //p')"
# Its own target dir unless the caller says: these flags rebuild everything.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$root/fuzz/target}"
# The instrumentation cargo-fuzz passes (sanitizer "none"), as stable flags.
# With --target, build scripts and proc macros are built without them.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cdebug-assertions -Coverflow-checks"
cargo build --release --locked --target "$triple" --bins

corpus_root="$(mktemp -d)"
trap 'rm -rf "$corpus_root"' EXIT
for t in "${TARGETS[@]}"; do
    mkdir -p "$corpus_root/$t" "artifacts/$t" "corpus/$t"
    echo "fuzzing $t for ${SECONDS_PER_TARGET} s"
    # libFuzzer prints a line per new input; keep that in a file and show
    # its end only when the target crashed, so a CI log's tail stays the
    # summary of the tests.
    log="$corpus_root/$t.log"
    if ! "$CARGO_TARGET_DIR/$triple/release/$t" \
        -max_total_time="$SECONDS_PER_TARGET" \
        -timeout="$INPUT_TIMEOUT_S" \
        -rss_limit_mb="$RSS_LIMIT_MB" \
        -max_len="$INPUT_BYTES_MAX" \
        -artifact_prefix="artifacts/$t/" \
        -print_final_stats=1 \
        "$corpus_root/$t" "corpus/$t" >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz: $t crashed; the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    grep -E '^(Done|stat::number_of_executed_units)' "$log" | sed "s/^/  $t: /"
done
echo "fuzz: ${#TARGETS[@]} targets ran ${SECONDS_PER_TARGET} s each without a crash"
