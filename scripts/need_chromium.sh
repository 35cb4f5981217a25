#!/usr/bin/env bash
# Install Debian's headless Chromium for the report's browser test when it is missing and we are root.
set -uo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing chromium (apt) for the HTML report test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
    || echo "[setup] warning: chromium could not be installed; the browser test will be skipped" >&2
else
  echo "[setup] note: chromium not installed and not root; the browser test will be skipped" >&2
fi
exit 0
