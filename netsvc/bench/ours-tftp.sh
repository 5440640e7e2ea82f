#!/usr/bin/env bash
# `--ours` for ../shared/bench/tftp.sh: netsvc serving BENCH_ROOT read-only over TFTP only.
# Usage (from the repository root, as root, after `cargo build --release -p netsvc`):
#   ../shared/bench/tftp.sh --ours 'exec netsvc/bench/ours-tftp.sh'
set -euo pipefail
bin=${NETSVC:-target/release/netsvc}
cfg="$BENCH_STATE/netsvc.toml"
# ipxe_dir = "": serve only the benchmark's root, not Debian's iPXE binaries beside it.
printf '[tftp]\nipxe_dir = ""\n' >"$cfg"
export RUST_LOG=${RUST_LOG:-warn}
exec "$bin" --config "$cfg" --tftp-listen "$BENCH_ADDR:$BENCH_PORT" \
  --boot-dir "$BENCH_ROOT" --state-dir "$BENCH_STATE"
