#!/usr/bin/env bash
# Recorded human speech for the tests of the recorded-speech corpus builder: the channel-name
# announcements of Debian's alsa-utils ("Front Left", ...; GPL-2), unpacked into
# .venv/test-recordings/alsa without installing the package. Tests that need them skip, saying
# so, where apt-get cannot download (not a Debian-based system).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=.venv/test-recordings/alsa
[ -f "$TARGET/Front_Left.wav" ] && exit 0
if [ -f /usr/share/sounds/alsa/Front_Left.wav ]; then
  mkdir -p "$TARGET" && cp /usr/share/sounds/alsa/*.wav "$TARGET/"
  exit 0
fi
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
  echo "note: no apt-get here; the recorded-speech tests will skip" >&2; exit 0; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if (cd "$WORK" && apt-get download alsa-utils >/dev/null 2>&1); then
  dpkg-deb -x "$WORK"/alsa-utils_*.deb "$WORK/root"
  mkdir -p "$TARGET" && cp "$WORK"/root/usr/share/sounds/alsa/*.wav "$TARGET/"
else
  echo "note: apt-get could not download alsa-utils; the recorded-speech tests will skip" >&2
fi
