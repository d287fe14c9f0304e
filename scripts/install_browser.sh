#!/usr/bin/env bash
# Install Debian's Chromium for the real-browser test (tests/test_browser.py), if missing.
# Idempotent: does nothing when /usr/bin/chromium exists. Needs root (CI runs as root).
# Playwright drives this system browser; never run `playwright install`.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install_browser.sh: /usr/bin/chromium is missing and this is not root (no sudo); run as root" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y chromium
/usr/bin/chromium --version
