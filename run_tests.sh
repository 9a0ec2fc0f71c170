#!/usr/bin/env bash
# Set up (or refresh) the virtual environment in .venv and run the whole test suite.
#   ./run_tests.sh [pytest args...]
# TORCH_REQUIREMENT overrides the PyTorch requirement (default: the CPU wheel torch==2.13.0), e.g.
#   TORCH_REQUIREMENT="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" ./run_tests.sh
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
TORCH_REQUIREMENT=${TORCH_REQUIREMENT:-torch==2.13.0}
BPY_REQUIREMENT=${BPY_REQUIREMENT:-bpy==5.0.1}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch first and on its own, so that nothing later resolves a different (multi-GB) build.
"${PIP[@]}" install $TORCH_REQUIREMENT
"${PIP[@]}" install -e ".[test]" "$BPY_REQUIREMENT"
exec .venv/bin/python -m pytest "$@"
