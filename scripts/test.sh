#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the default test suite. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the long reproductions.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
