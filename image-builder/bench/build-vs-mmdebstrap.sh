#!/usr/bin/env bash
# Benchmark (not a test): cold build of debian-bookworm-server against plain mmdebstrap of the
# same package set + mkfs.ext4 -d + qemu-img convert, side by side in one run (alternating,
# ROUNDS rounds, default 3), then three warm rebuilds, each after a one-file change (medians).
# Run as root from the repository root; needs a release build (cargo build --release -p
# image-builder). Prints the figures and the ratios.
set -euo pipefail
cd "$(dirname "$0")/../.."

bin=${IMAGE_BUILDER:-${CARGO_TARGET_DIR:-target}/release/image-builder}
work=$(mktemp -d /var/tmp/ib-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
tpl=templates/images/debian-bookworm-server
kernel=${KERNEL:-linux-image-amd64}

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

# The same package set the template installs, and the machine's own mirror lines.
pkgs=$(sed -n '/^packages = \[/,/^\]/p' "$tpl/image.toml" | tr -d ' \n[]"' | sed 's/^packages=//; s/,$//')
pkgs="$pkgs,$kernel"
# The same source lines image-builder takes (suite, -updates, -security), from deb822 files.
mapfile -t mirrors < <(awk '/^URIs:/{u=$2} /^Suites:/{for(i=2;i<=NF;i++) print "deb " u " " $i " main"}' \
  /etc/apt/sources.list.d/*.sources | grep ' bookworm')

# Downloads and dpkg make single runs noisy: the baseline and the cold build alternate for
# $ROUNDS rounds (each cold build with an empty cache) and the medians are compared.
rounds=${ROUNDS:-3}
median() { printf '%s\n' "$@" | sort -n | sed -n "$((($# + 1) / 2))p"; }
bases=()
colds=()
for r in $(seq "$rounds"); do
  echo "round $r: baseline: mmdebstrap --variant=minbase --include=$pkgs + mkfs.ext4 -d + qemu-img convert"
  rm -rf "$work/base" "$work/base.raw" "$work/base.qcow2"
  t0=$(now)
  mmdebstrap --mode=root --quiet --variant=minbase --dpkgopt=force-unsafe-io \
    --include="$pkgs" bookworm "$work/base" "${mirrors[@]}"
  truncate -s 3G "$work/base.raw"
  mkfs.ext4 -q -F -d "$work/base" "$work/base.raw"
  qemu-img convert -f raw -O qcow2 "$work/base.raw" "$work/base.qcow2"
  bases+=("$(since "$t0")")

  echo "round $r: image-builder cold build"
  rm -rf "$work/cache" "$work/out"
  t0=$(now)
  "$bin" build "$tpl" --out "$work/out" --cache-dir "$work/cache" --set "kernel=$kernel" --json >"$work/cold.jsonl"
  colds+=("$(since "$t0")")
done
rm -rf "$work/base" "$work/base.raw" "$work/base.qcow2"
base=$(median "${bases[@]}")
cold=$(median "${colds[@]}")

echo "image-builder warm rebuilds, each after changing one rendered file (3 runs, median)"
cp -a "$tpl" "$work/tpl"
warms=()
for i in 1 2 3; do
  echo "warm rebuild $i $(now)" >>"$work/tpl/files/motd.hbs"
  t0=$(now)
  "$bin" build "$work/tpl" --out "$work/out$i" --cache-dir "$work/cache" --set "kernel=$kernel" --json >"$work/warm$i.jsonl"
  warms+=("$(since "$t0")")
  grep -q '"event":"stage_cached","stage":"bootstrap"' "$work/warm$i.jsonl"
  rm -rf "$work/out$i"
done
warm=$(median "${warms[@]}")

printf 'baseline %.1f s (median of %s)\ncold %.1f s (median of %s; %.2fx baseline)\n' \
  "$base" "$(printf '%.1f ' "${bases[@]}")" "$cold" "$(printf '%.1f ' "${colds[@]}")" \
  "$(echo "$cold / $base" | bc -l)"
printf 'warm %.1f s (median of %s; %.0f%% of cold)\n' \
  "$warm" "$(printf '%.1f ' "${warms[@]}")" "$(echo "100 * $warm / $cold" | bc -l)"
echo "stage timings and frame reuse (last cold build, then each warm rebuild):"
grep -h 'stage_finished\|frames_written' "$work/cold.jsonl" "$work"/warm?.jsonl | sed 's/"key":"[0-9a-f]*",//'
