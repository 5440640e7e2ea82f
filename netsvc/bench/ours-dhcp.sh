#!/usr/bin/env bash
# `--ours` for ../shared/bench/dhcp.sh: netsvc serving DHCP on BENCH_IFACE, leases durable in
# SQLite under BENCH_STATE. Usage (from the repository root, as root, after
# `cargo build --release -p netsvc`):
#   ../shared/bench/dhcp.sh --ours 'exec netsvc/bench/ours-dhcp.sh' \
#     --ours-count 'target/release/netsvc --count-leases --state-dir "$BENCH_STATE"'
set -euo pipefail
bin=${NETSVC:-target/release/netsvc}
cfg="$BENCH_STATE/netsvc.toml"
cat >"$cfg" <<CONF
[dhcp]
lease_time_secs = $BENCH_LEASE_TIME
uefi_boot_file = "$BENCH_BOOTFILE"
router_advertisements = false
CONF
# Per-lease info lines would cost us what the peers' quiet logging does not cost them.
export RUST_LOG=${RUST_LOG:-warn}
exec "$bin" --config "$cfg" --interface "$BENCH_IFACE" --listen "0.0.0.0:$BENCH_PORT" \
  --dhcp-range "$BENCH_POOL_START-$BENCH_POOL_END" --state-dir "$BENCH_STATE" \
  --boot-dir "$BENCH_STATE/boot"
