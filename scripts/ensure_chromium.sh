#!/usr/bin/env bash
# The explorer's browser tests drive Debian's headless Chromium through its ChromeDriver (selenium, with
# /usr/bin/chromedriver named explicitly: nothing downloads a browser). Install both when missing.
# Never fails `make test`: when they cannot be installed it says why, and those tests skip saying so too.
set -uo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
echo "Chromium or ChromeDriver not found: installing Debian's chromium and chromium-driver packages" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "not root and no passwordless sudo: the browser tests will skip" \
         "(install them yourself: sudo apt-get install -y chromium chromium-driver)" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q \
   || ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver; then
  echo "apt-get could not install chromium chromium-driver: the browser tests will skip" >&2
  exit 0
fi
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  echo "installed: $(/usr/bin/chromium --version 2>/dev/null); $(/usr/bin/chromedriver --version 2>/dev/null)" >&2
else
  echo "chromium installed but /usr/bin/chromium or /usr/bin/chromedriver is missing: the browser tests will skip" >&2
fi
exit 0
