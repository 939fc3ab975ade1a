#!/usr/bin/env bash
# Build the fuzz targets (libFuzzer through libfuzzer-sys, coverage instrumentation by
# rustc-wrapper.sh: stable rustc, no cargo-fuzz or nightly needed) and run each for a bounded
# time from its seed corpus. Fails on the first crash, naming the reproducer.
#   fuzz/run.sh [seconds per target, default 30] [target...]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-30}"; shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(h1_request h1_response chunked config xds_resource metadata_exchange peer_metadata dns_message)
fi
export RUSTC_WRAPPER="$PWD/rustc-wrapper.sh"
# The build directory lives outside the checkout, so that the dependencies (a long build with
# coverage flags of their own) are built once per machine, not once per clone.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/remora-fuzz-target}"
cargo build --bins
bin="$CARGO_TARGET_DIR/debug"
mkdir -p artifacts corpus-run
status=0
for t in "${targets[@]}"; do
  # New inputs go to corpus-run/ (not committed); the seeds stay as they are.
  mkdir -p "corpus-run/$t" "artifacts/$t"
  echo "== fuzz $t for ${secs}s"
  if ! "$bin/$t" "corpus-run/$t" "corpus/$t" \
      -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="artifacts/$t/" -print_final_stats=1 > "artifacts/$t.log" 2>&1; then
    status=1
    tail -40 "artifacts/$t.log"
    for f in "artifacts/$t"/*; do
      [ -e "$f" ] && echo "FUZZ FAILURE in $t: reproduce with: $bin/$t fuzz/$f"
    done
  else
    grep -E "^stat::number_of_executed_units|^Done" "artifacts/$t.log" || true
  fi
done
exit $status
