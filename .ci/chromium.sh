#!/usr/bin/env bash
# Make Debian's Chromium available for the browser test of `harness ui` (tests/test_ui_browser.py,
# driven by Playwright with executable_path: no browser download). Installs it if missing.
# Prints the binary's path; prints nothing if it cannot (the test then skips with a reason).
set -uo pipefail
bin=$(command -v chromium || true)
if [ -z "$bin" ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } >&2 || exit 0
  bin=$(command -v chromium || true)
fi
[ -n "$bin" ] && "$bin" --headless --no-sandbox --version >/dev/null 2>&1 || exit 0
echo "$bin"
