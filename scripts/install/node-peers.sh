#!/usr/bin/env bash
# Node peers for the pool tests: `socket.io` (server) and `socket.io-client` (the Engine.IO
# affinity test) and `peer` (PeerJS servers, room affinity) from npm, in
#
#   ${SIGMESH_NODE_PEERS:-$HOME/.local/share/sigmesh/node}/node_modules
#
# Does nothing when both are there already. Needs Node.js (Debian's `nodejs` and `npm`).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
prefix="${SIGMESH_NODE_PEERS:-$HOME/.local/share/sigmesh/node}"
if [ -f "$prefix/node_modules/socket.io/package.json" ] && [ -f "$prefix/node_modules/socket.io-client/package.json" ] \
  && [ -f "$prefix/node_modules/peer/package.json" ]; then
  exit 0
fi
have node || apt_install nodejs
have npm || apt_install npm
mkdir -p "$prefix"
cd "$prefix"
[ -f package.json ] || echo '{"name": "sigmesh-node-peers", "private": true}' >package.json
echo "installing socket.io, socket.io-client and peer (npm) into $prefix"
npm install --no-audit --no-fund --loglevel=error socket.io@4 socket.io-client@4 peer@1
node -e 'console.log("socket.io", require("socket.io/package.json").version)'
