#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine with Node 20 and a C++ compiler:
# system packages (cmake for the runtime, chromium for the webview and VS Code tests),
# npm dependencies, and a build of everything. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v g++ >/dev/null 2>&1 || need+=(g++)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# onnxruntime-node's install script downloads GPU provider files; its CPU library ships in the package.
export ONNXRUNTIME_NODE_INSTALL=skip
# `npm install` rather than `npm ci`: it installs exactly what package-lock.json pins, but it
# tolerates optional per-platform packages that the registry does not serve (node-llama-cpp
# lists builds for every OS; the lock can only record those that exist), where `npm ci`
# refuses the lock as out of sync.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm install --no-audit --no-fund
fi
npm run --silent build
