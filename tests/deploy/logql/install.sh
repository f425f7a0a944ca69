#!/usr/bin/env bash
# Installs the LogQL parser of the dashboard tests (@grafana/lezer-logql, exactly as
# package-lock.json pins it) into tests/deploy/logql/node_modules with `npm ci`, unless it already
# holds what this lock file pins. Run by .ci/run; run it by hand before the tests on a new clone.
set -euo pipefail
cd "$(dirname "$0")"
stamp=node_modules/.installed-from-package-lock.json
if [[ -f $stamp ]] && cmp -s package-lock.json "$stamp"; then
  echo "LogQL parser: node_modules matches package-lock.json"
  exit 0
fi
# --ignore-scripts: nothing to build, and no install script of a dependency runs. The grammar
# package declares a newer Node in "engines" than it needs (it is plain ES2015 JavaScript): the
# tests run it on the machine's Node, which they check is 18 or newer.
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
cp package-lock.json "$stamp"
echo "LogQL parser: installed $(node -p 'require("./node_modules/@grafana/lezer-logql/package.json").version')"
