#!/usr/bin/env bash
# Runs every test tier (unit, component, interop with stock clients in network namespaces,
# QEMU end-to-end) and a bounded fuzzing pass over every decoder of untrusted bytes.
# Installs what it needs first. Run as root from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."

tests/setup.sh
cargo nextest run --workspace --profile ci --no-tests=warn
tests/fuzz.sh "${FUZZ_SECONDS:-30}"
