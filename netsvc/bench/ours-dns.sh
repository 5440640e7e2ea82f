#!/usr/bin/env bash
# `--ours` for ../shared/bench/dns.sh: netsvc serving only DNS, the benchmark's forward and
# reverse zone files on BENCH_ADDR:BENCH_PORT. Usage (from the repository root, after
# `cargo build --release -p netsvc`):
#   ../shared/bench/dns.sh --ours 'exec netsvc/bench/ours-dns.sh'
set -euo pipefail
bin=${NETSVC:-target/release/netsvc}
cfg="$BENCH_STATE/netsvc.toml"
# rate_limit = 0: dnsperf's whole load comes from one client, which RRL would throttle (the
# peers run with theirs off). well_known = []: serve the zone files and nothing else.
cat >"$cfg" <<CONF
state_dir = "$BENCH_STATE"
[dns]
listen = "$BENCH_ADDR:$BENCH_PORT"
domain = "$BENCH_ZONE_NAME"
well_known = []
rate_limit = 0
udp_workers = $BENCH_THREADS
zone_files = [
  { origin = "$BENCH_ZONE_NAME", path = "$BENCH_ZONE" },
  { origin = "$BENCH_REVZONE_NAME", path = "$BENCH_REVZONE" },
]
CONF
export RUST_LOG=${RUST_LOG:-warn}
exec "$bin" --config "$cfg"
