#!/usr/bin/env bash
# cargo-fuzz and a nightly toolchain: scripts/fuzz-smoke runs every fuzz target for a few
# seconds so they keep building (fuzz/README.md has the long runs).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
rustup toolchain list 2>/dev/null | grep -q '^nightly' \
  || rustup toolchain install nightly --profile minimal
have cargo-fuzz || cargo install cargo-fuzz --locked --quiet
