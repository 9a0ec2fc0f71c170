#!/usr/bin/env bash
# The extension's tests in the other supported Blender versions (the main suite uses bpy 5.0.1):
#   tests/blender_versions.sh [4.2.23 4.5.15]
# Each version gets its own virtual environment in .venv-bpy-VERSION (torch as in run_tests.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
TORCH_REQUIREMENT=${TORCH_REQUIREMENT:-torch==2.13.0}
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(4.2.23 4.5.15)
status=0
for version in "${versions[@]}"; do
  venv=".venv-bpy-$version"
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip --disable-pip-version-check -q install $TORCH_REQUIREMENT
  "$venv/bin/python" -m pip --disable-pip-version-check -q install -e ".[test]" "bpy==$version"
  echo "== Blender $version"
  "$venv/bin/python" -m pytest -q tests/test_addon.py tests/test_addon_takes_safety.py tests/test_addon_cli_safety.py tests/test_addon_batches.py tests/test_landmarks.py || status=1
done
exit $status
