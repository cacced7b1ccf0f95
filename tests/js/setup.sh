#!/usr/bin/env bash
# Installs the npm packages of the JavaScript client tests (the only download the test setup does).
# Run once before ctest; without it the openai client test is skipped with a message saying so.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v npm >/dev/null 2>&1; then
  echo "tests/js/setup.sh: npm is not installed (node 20 + npm are needed for the openai client test)" >&2
  exit 1
fi
npm install --no-audit --no-fund --loglevel=error
echo "tests/js: openai $(node -p "JSON.parse(require('fs').readFileSync('node_modules/openai/package.json')).version") installed"
