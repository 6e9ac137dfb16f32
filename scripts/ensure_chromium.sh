#!/bin/sh
# The browser test (tests/test_browser.py) drives the system's Chromium. Install Debian's package when it is
# missing and we may (root with apt-get); otherwise say so in one line and let the test fail with its own.
if [ -n "$FROMAGE_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Chromium for the browser test (apt-get install chromium)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
        || echo "could not install chromium with apt-get; tests/test_browser.py will fail"
else
    echo "Chromium is missing: install your system's chromium package (or set FROMAGE_CHROMIUM); tests/test_browser.py will fail"
fi
exit 0
