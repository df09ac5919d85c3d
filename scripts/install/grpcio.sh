#!/usr/bin/env bash
# Python gRPC (`grpcio`) for istio/ratelimit-check/run.sh: its stand-in for Envoy's global rate
# limit service (ratelimit_service.py, a real gRPC server of
# envoy.service.ratelimit.v3.RateLimitService) runs on it, in a virtualenv at
#
#   ${SIGMESH_GRPC_PYTHON:-$HOME/.local/share/sigmesh/grpc/bin/python}
#
# Does nothing when that Python imports grpc already.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
prefix="$HOME/.local/share/sigmesh/grpc"
py="${SIGMESH_GRPC_PYTHON:-$prefix/bin/python}"
if [ -x "$py" ] && "$py" -c 'import grpc' 2>/dev/null; then
  exit 0
fi
have python3 || apt_install python3
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
echo "installing grpcio (PyPI) into $prefix"
rm -rf "$prefix"
python3 -m venv "$prefix"
"$prefix/bin/pip" install -q --disable-pip-version-check "grpcio>=1.60,<2"
"$prefix/bin/python" -c 'import grpc; print("grpcio", grpc.__version__)'
