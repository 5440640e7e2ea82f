#!/bin/sh
# Test hook: appends which hook ran at which hook point, and what it found already applied,
# to /var/lib/image-builder-test/hooks.log (runs in the image's chroot under `sh -e`).
mkdir -p /var/lib/image-builder-test
seen=""
if [ -e /etc/motd ] && id ci >/dev/null 2>&1; then seen="$seen files+users"; fi
if [ -e /usr/lib/image-builder-test/agent ]; then seen="$seen agent"; fi
echo "$IMAGE_BUILDER_STAGE $IMAGE_BUILDER_HOOK$seen" >>/var/lib/image-builder-test/hooks.log
