#!/bin/sh
# Runs in the image's chroot before packing: drop caches that only make the image bigger.
set -eu
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
find /var/log -type f -exec truncate -s 0 {} +
