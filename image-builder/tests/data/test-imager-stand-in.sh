#!/bin/sh
# TEST ONLY: stands in for the provisioner's imager inside the deploy ramdisk in
# image-builder's e2e test. It proves /init exec'd it with the kernel command line's
# provisioner.* arguments, then powers the VM off.
echo "TEST-IMAGER-STAND-IN started args=$* url=${PROVISIONER_URL:-}"
poweroff -f
