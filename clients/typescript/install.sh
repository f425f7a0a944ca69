#!/usr/bin/env bash
# Installs the TypeScript client's build and test tools (typescript, openapi-typescript, @types/node:
# devDependencies only, exactly as package-lock.json pins them) into clients/typescript/node_modules
# with `npm ci`, unless it already holds what this lock file pins. Run by .ci/run and ci.yml; run it
# by hand before `pytest tests/clients` on a new clone.
set -euo pipefail
cd "$(dirname "$0")"
stamp=node_modules/.installed-from-package-lock.json
if [[ -f $stamp ]] && cmp -s package-lock.json "$stamp"; then
  echo "TypeScript client: node_modules matches package-lock.json"
  exit 0
fi
# --ignore-scripts: no install script of a dependency runs (none needs one).
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
cp package-lock.json "$stamp"
echo "TypeScript client: installed typescript $(node -p 'require("typescript/package.json").version')," \
  "openapi-typescript $(node -p 'require("openapi-typescript/package.json").version')"
