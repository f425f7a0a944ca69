#!/usr/bin/env bash
# npm-ci.sh DIR LABEL: installs DIR's npm packages exactly as its package-lock.json pins them
# (`npm ci`), unless DIR/node_modules already holds what that lock file pins (a stamp, the lock file
# copied there after the last install). Used by clients/typescript/install.sh and
# tests/deploy/logql/install.sh. --ignore-scripts: no install script of a dependency runs (none of
# theirs needs one).
set -euo pipefail
cd "$1"
stamp=node_modules/.installed-from-package-lock.json
if [[ -f $stamp ]] && cmp -s package-lock.json "$stamp"; then
  echo "$2: node_modules matches package-lock.json"
  exit 0
fi
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
cp package-lock.json "$stamp"
echo "$2: installed from package-lock.json"
