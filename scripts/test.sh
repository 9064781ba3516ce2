#!/usr/bin/env bash
# The test suite (CPU only; README.md says how long it took). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
exec python -m pytest -q tests "$@"
