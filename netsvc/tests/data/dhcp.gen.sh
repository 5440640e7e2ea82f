#!/usr/bin/env bash
# Recreates the captured DHCP client packets used by tests/captured_dhcp.rs:
#   ipxe-bios.pcap  QEMU's iPXE ROM (SeaBIOS, virtio-net) sending DISCOVER/REQUEST
#   ovmf-pxe.pcap   OVMF's own UEFI PXE client (romfile= disables the iPXE ROM)
#   dhclient.pcap   ISC dhclient on a veth in a network namespace
# QEMU runs with user-mode networking and a filter-dump on the netdev; its built-in DHCP
# server answers, which is fine: only the client's packets are used. Needs root for dhclient.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; ip netns del ndgen-$$ 2>/dev/null || true' EXIT

qemu() { # qemu OUT SECONDS ARGS...
  local out=$1 secs=$2
  shift 2
  timeout "$secs" qemu-system-x86_64 -accel tcg -m 256 -display none -serial null -monitor none \
    -netdev user,id=n0 -object filter-dump,id=f0,netdev=n0,file="$tmp/$out" "$@" || true
  cp "$tmp/$out" "$out"
}

qemu ipxe-bios.pcap 20 -boot n -device virtio-net-pci,netdev=n0,mac=52:54:00:61:00:01
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$tmp/vars.fd"
qemu ovmf-pxe.pcap 60 \
  -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
  -drive if=pflash,format=raw,file="$tmp/vars.fd" \
  -device virtio-net-pci,netdev=n0,mac=52:54:00:61:00:02,bootindex=1,romfile=

ns=ndgen-$$
ip netns add "$ns"
ip -n "$ns" link add ndgen0 type veth peer name ndgen1
ip -n "$ns" link set ndgen0 address 52:54:00:61:00:03 up
ip -n "$ns" link set ndgen1 up
ip netns exec "$ns" timeout 6 tcpdump -ni ndgen1 -c 2 -w "$tmp/dhclient.pcap" udp port 67 2>/dev/null &
sleep 1
printf '#!/bin/sh\nexit 0\n' >"$tmp/hook.sh"
chmod +x "$tmp/hook.sh"
touch "$tmp/leases"
ip netns exec "$ns" timeout 4 dhclient -d -1 -sf "$tmp/hook.sh" -lf "$tmp/leases" -pf "$tmp/pid" ndgen0 \
  >/dev/null 2>&1 || true
wait
cp "$tmp/dhclient.pcap" dhclient.pcap
ls -l ./*.pcap
