#!/usr/bin/env bash
# The demo: a voice in, a talking head out, in Blender.
#   ./demo.sh [AUDIO_FILE]      (default: a sentence spoken by espeak-ng)
# Sets up .venv like run_tests.sh, then writes out/demo.blend, out/demo_preview.png and out/demo.mp4.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh
exec .venv/bin/python scripts/demo.py "$@"
