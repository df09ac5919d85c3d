#!/usr/bin/env bash
# Debian's redis-server, the real Redis behind `cluster.redis` in the tests (proxy/tests/fleet*.rs).
# The tests start and stop their own `redis-server` on 127.0.0.1 (no persistence, a free port);
# the package's own service is not used.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
have redis-server && exit 0
apt_install redis-server
