#!/usr/bin/env bash
# Creates (or refreshes) the virtual environment in .venv: PyTorch first and on its own (the CPU
# wheel torch==2.13.0 unless TORCH_REQUIREMENT says otherwise), then the project with its test,
# corpus, landmarks (mediapipe: the add-on's automatic head landmarks) and ray (`animate --ray`,
# whose test starts a local Ray cluster) extras and the bpy
# module (BPY_REQUIREMENT, default bpy==5.0.1); then the recorded speech some tests read
# (scripts/get_test_recordings.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
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
"${PIP[@]}" install -e ".[test,corpus,landmarks,ray]" "$BPY_REQUIREMENT"
scripts/get_test_recordings.sh
