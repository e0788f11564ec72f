#!/usr/bin/env bash
# The test set-up's one step outside the venv: Debian's chromium, which the web-chat test
# (tests/test_chat_web.py) drives headless. Installed with apt-get when it is missing and apt-get
# is there; checked on every `make test`, since a machine may keep the venv and lack the browser.
# `make demo` does not need it.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian's chromium (headless browser for the web-chat test)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "[setup] WARNING: chromium is missing and cannot be installed here (needs apt-get as root);" \
      "tests/test_chat_web.py will fail until Debian's chromium is installed" >&2
  fi
fi

