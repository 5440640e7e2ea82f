#!/usr/bin/env bash
# Installs everything the appliance, its demo and its tests need on a Debian 12 machine, and
# starts the system services the tests use. Idempotent: a second run installs nothing.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/setup.sh: run as root (it installs Debian packages and starts libvirtd)" >&2
  exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "tests/setup.sh: no Rust toolchain: install one (rustup, stable) and run again" >&2
  exit 1
fi

# qemu-utils must come from the same release as qemu-system-x86 (installing one alone can
# remove the other), so both are named and qemu-utils is taken from the release we run on.
# shellcheck source=/dev/null
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
packages=(
  qemu-system-x86 qemu-utils ovmf ipxe ipxe-qemu
  libvirt-daemon-system libvirt-dev pkg-config
  debootstrap mmdebstrap fdisk gdisk mtools dosfstools syslinux syslinux-common extlinux
  systemd-boot-efi grub-pc-bin grub-efi-amd64-bin busybox-static cpio e2fsprogs xorriso
  squashfs-tools zstd binutils linux-image-cloud-amd64
  isc-dhcp-client udhcpc dnsutils tftp-hpa atftp curl libnbd-bin nbdkit libnfs-utils ndisc6
  nfs-ganesha nfs-ganesha-vfs rpcbind kea-admin tcpdump iproute2 iputils-ping shellcheck
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "tests/setup.sh: installing ${missing[*]}" >&2
  apt-get update
  install=("${packages[@]/#qemu-utils/qemu-utils/$codename}")
  DEBIAN_FRONTEND=noninteractive apt-get install -y --allow-downgrades \
    -o Dpkg::Options::=--force-confold "${install[@]}"
fi

# The system libvirtd and virtlogd, for the host agent's tests (no systemd in CI containers).
if ! pgrep -x virtlogd >/dev/null; then virtlogd -d; fi
if ! pgrep -x libvirtd >/dev/null; then libvirtd -d; fi

if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
