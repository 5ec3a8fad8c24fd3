#!/usr/bin/env bash
# Runs every test: unit, property, model and multi-process tests (cargo test), the fuzz
# corpus replay, and the real XenAPI clients (Python `xenapi`, npm `xen-api`) against a
# real xenpoold over HTTP and HTTPS. Installs what it needs under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --locked --bins
cargo test --workspace --locked

scripts/client-tests.sh
