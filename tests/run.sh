#!/usr/bin/env bash
# Runs the test suite in the project venv. pytest's exit code 5 (no tests collected) means the
# setup is broken, so it is reported as a failure, not success.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${FLYWHEEL_VENV:-.venv}
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
"$VENV/bin/python" -m pytest "$@"
code=$?
if [[ $code == 5 ]]; then
  echo "tests/run.sh: pytest collected no tests; the setup is broken" >&2
  exit 1
fi
exit $code
