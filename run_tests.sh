#!/usr/bin/env bash
# Set up (or refresh) the virtual environment in .venv and run the whole test suite.
#   ./run_tests.sh [pytest args...]
# TORCH_REQUIREMENT overrides the PyTorch requirement (default: the CPU wheel torch==2.13.0), e.g.
#   TORCH_REQUIREMENT="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" ./run_tests.sh
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh
exec .venv/bin/python -m pytest "$@"
