#!/usr/bin/env bash
# Debian's coturn (`turnserver`), the real TURN server behind sigmesh's TURN relay in the tests
# (proxy/tests/turn.rs, examples/ice-call). The tests start and stop `turnserver` themselves on
# 127.0.0.1; the package's own service is not used.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
have turnserver && exit 0
apt_install coturn
