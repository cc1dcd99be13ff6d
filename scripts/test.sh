#!/usr/bin/env bash
# The test command from README.md: installs what the tests need, checks lint and types, then runs
# the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
python3 -m ruff check vers tests bench
python3 -m mypy vers
python3 -m pytest -q -p no:cacheprovider "$@"
