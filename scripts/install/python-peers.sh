#!/usr/bin/env bash
# Python peers for the TLS and compression tests: `websockets` (a client and a server that
# negotiate permessage-deflate by default) in a virtualenv at
#
#   ${SIGMESH_PYTHON:-$HOME/.local/share/sigmesh/py/bin/python}
#
# Does nothing when that Python imports them already.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
prefix="$HOME/.local/share/sigmesh/py"
py="${SIGMESH_PYTHON:-$prefix/bin/python}"
if [ -x "$py" ] && "$py" -c 'import websockets' 2>/dev/null; then
  exit 0
fi
have python3 || apt_install python3
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
echo "installing websockets (PyPI) into $prefix"
rm -rf "$prefix"
python3 -m venv "$prefix"
"$prefix/bin/pip" install -q --disable-pip-version-check "websockets>=13,<16"
"$prefix/bin/python" -c 'import websockets; print("websockets", websockets.__version__)'
