#!/usr/bin/env bash
# Make Debian's Chromium and its chromedriver available for the browser test (tests/test_serve_browser.py):
# apt-get where apt is there and we are root; otherwise say so (the test then skips, saying why).
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing chromium and chromium-driver with apt-get (for the browser test)..."
  { DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver ||
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; }; } >/dev/null 2>&1
  command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && exit 0
fi
echo "no chromium/chromedriver (install Debian's chromium and chromium-driver): the browser test will be skipped"
exit 0
