#!/usr/bin/env bash
# Debian's Chromium and its WebDriver, for the browser end-to-end test (proxy/tests/browser.rs).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
have chromium && have chromedriver && exit 0
apt_install chromium chromium-driver
