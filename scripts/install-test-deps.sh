#!/bin/sh
# Installs what the browser end-to-end test (proxy/tests/browser.rs) needs: Debian's Chromium and
# its WebDriver (/usr/bin/chromium, /usr/bin/chromedriver). Run as root (or via sudo) on Debian/Ubuntu.
set -eu
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium chromium-driver
/usr/bin/chromium --version
/usr/bin/chromedriver --version
