#!/usr/bin/env bash
# The wasm32-wasip1 target: sigmesh-core must build for it (the Envoy filter reuses it).
set -euo pipefail
rustup target list --installed 2>/dev/null | grep -q '^wasm32-wasip1$' || rustup target add wasm32-wasip1
