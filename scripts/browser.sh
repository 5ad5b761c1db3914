#!/usr/bin/env bash
# Install the headless browser kelp's web-view tests drive: Debian's chromium and its chromedriver
# (apt-get, only when chromedriver is not on the PATH yet). The Python side (selenium) comes from
# requirements-test.txt.
#   scripts/browser.sh install
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "browser.sh: $*" >&2; }

source scripts/broker-lib.sh

case "${1:-}" in
    install) ensure_installed chromedriver "install chromium and chromium-driver yourself" chromium chromium-driver ;;
    *) echo "usage: scripts/browser.sh install" >&2; exit 2 ;;
esac
