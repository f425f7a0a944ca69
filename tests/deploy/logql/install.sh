#!/usr/bin/env bash
# Installs the LogQL parser of the dashboard tests (@grafana/lezer-logql, exactly as
# package-lock.json pins it) into tests/deploy/logql/node_modules with `npm ci`, unless it already
# holds what this lock file pins. Run by .ci/run; run it by hand before the tests on a new clone.
# The grammar package declares a newer Node in "engines" than it needs (it is plain ES2015
# JavaScript): the tests run it on the machine's Node, which they check is 18 or newer.
set -euo pipefail
cd "$(dirname "$0")"
../../../scripts/npm-ci.sh . "LogQL parser"
echo "LogQL parser: @grafana/lezer-logql $(node -p 'require("./node_modules/@grafana/lezer-logql/package.json").version')"
