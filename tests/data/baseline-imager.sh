#!/bin/sh
# The write baseline of `deploy-bench` (tests/src/bin/deploy-bench.rs), NOT an imager: built
# into a deploy ramdisk in place of the imager (`image-builder build ... --set imager=THIS`),
# it is exec'd by /init with the kernel command line's `--url=... --secret=...` arguments.
# It streams the golden image `minimal` from the control node's image store straight onto
# /dev/vda with busybox `wget | dd`, times that from /proc/uptime (sync included), prints
# `BASELINE:` lines on the console and powers the machine off. The ramdisk has no curl and no
# zstd, so it always streams the raw `disk.raw`. It never prints its arguments (the secret).
url=""
for arg in "$@"; do
  case "$arg" in
    --url=*) url=${arg#--url=} ;;
  esac
done
src="$url/images/minimal/disk.raw"
disk=/dev/vda
echo "BASELINE: streaming $src to $disk"
start=$(cut -d' ' -f1 /proc/uptime)
{ wget -S -O - "$src" 2>/tmp/wget.err; echo $? >/tmp/wget.rc; } | dd of="$disk" bs=1M 2>/tmp/dd.err
sync
end=$(cut -d' ' -f1 /proc/uptime)
echo "BASELINE: wget exit $(cat /tmp/wget.rc): $(tr '\r' '\n' </tmp/wget.err | tail -n 1)"
echo "BASELINE: dd: $(tr '\n' ' ' </tmp/dd.err)"
# Busybox dd prints records, not bytes: a body that wget completed (exit 0) has Content-Length.
bytes=0
if [ "$(cat /tmp/wget.rc)" = 0 ]; then
  bytes=$(grep -i '^ *content-length:' /tmp/wget.err | tr -dc '0-9')
fi
secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
echo "BASELINE: wrote ${bytes:-0} bytes in $secs s"
poweroff -f
