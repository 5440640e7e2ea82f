#!/bin/sh
# Test hook standing in for the host agent's installation: builds a tiny package and installs
# it with dpkg, so manifest.json must list it (packages come from the customised tree).
d=$(mktemp -d)
mkdir -p "$d/pkg/DEBIAN" "$d/pkg/usr/lib/image-builder-test"
cat >"$d/pkg/DEBIAN/control" <<CONTROL
Package: image-builder-test-agent
Version: 1.0-1
Architecture: all
Maintainer: image-builder tests <root@localhost>
Description: stand-in for the host agent (image-builder tests)
CONTROL
echo "agent of $IMAGE_NAME $IMAGE_VERSION" >"$d/pkg/usr/lib/image-builder-test/agent"
dpkg-deb --root-owner-group --build "$d/pkg" "$d/agent.deb" >/dev/null
dpkg -i "$d/agent.deb" >/dev/null
rm -rf "$d"
mkdir -p /var/lib/image-builder-test
echo "$IMAGE_BUILDER_STAGE $IMAGE_BUILDER_HOOK" >>/var/lib/image-builder-test/hooks.log
