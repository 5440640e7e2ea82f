#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time ($1 seconds each, default 30).
# cargo-fuzz needs nightly-only compiler flags; RUSTC_BOOTSTRAP lets the stable toolchain
# accept them, since no other toolchain can be installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}

fuzz_dirs=()
for d in */fuzz; do
  [ -f "$d/Cargo.toml" ] && fuzz_dirs+=("$d")
done
if [ ${#fuzz_dirs[@]} -eq 0 ]; then
  echo "fuzz: no fuzz targets" >&2
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
for d in "${fuzz_dirs[@]}"; do
  crate=$(dirname "$d")
  for target in $(cd "$crate" && cargo fuzz list); do
    echo "fuzz: $crate/$target for ${secs}s" >&2
    (cd "$crate" && cargo fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=2048)
  done
done
