#!/usr/bin/env bash
# Installs the TypeScript client's build and test tools (typescript, openapi-typescript, @types/node:
# devDependencies only, exactly as package-lock.json pins them) into clients/typescript/node_modules
# with `npm ci`, unless it already holds what this lock file pins. Run by .ci/run and ci.yml; run it
# by hand before `pytest tests/clients` on a new clone.
set -euo pipefail
cd "$(dirname "$0")"
../../scripts/npm-ci.sh . "TypeScript client"
echo "TypeScript client: typescript $(node -p 'require("typescript/package.json").version')," \
  "openapi-typescript $(node -p 'require("openapi-typescript/package.json").version')"
