#!/usr/bin/env bash
# RUSTC_WRAPPER for the fuzz build: coverage instrumentation (what libFuzzer needs, on stable
# rustc) only for remora and the fuzz targets, so the dependencies are the workspace's own
# compiled crates, shared through its target directory.
rustc="$1"; shift
instrument=0
prev=""
for a in "$@"; do
  if [ "$prev" = "--crate-name" ]; then
    case "$a" in remora|h1_request|h1_response|chunked|config|xds_resource|metadata_exchange|peer_metadata) instrument=1 ;; esac
  fi
  prev="$a"
done
if [ "$instrument" = 1 ]; then
  exec "$rustc" "$@" -Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing
fi
exec "$rustc" "$@"
