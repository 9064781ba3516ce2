#!/usr/bin/env bash
# The test suite (CPU only, under 10 minutes on 2 cores). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
exec python -m pytest -q tests "$@"
