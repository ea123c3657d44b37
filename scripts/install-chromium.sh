#!/usr/bin/env bash
# Installs Debian's chromium for the console's browser tests (make test) when it is missing.
# Uses apt-get (with sudo when not root). Exits 0 when chromium is present afterwards; otherwise
# prints why and exits 1 (the browser test then fails under CI=true and skips elsewhere).
set -uo pipefail
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
	exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-chromium: $CHROMIUM is missing and there is no apt-get: install chromium yourself (or set CHROMIUM)" >&2
	exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
	if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		SUDO="sudo -n"
	else
		echo "install-chromium: $CHROMIUM is missing; not root and no password-less sudo: run 'sudo apt-get install -y chromium'" >&2
		exit 1
	fi
fi
echo "install-chromium: installing Debian's chromium for the console's browser tests" >&2
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; then
	$SUDO apt-get update -qq >/dev/null 2>&1 || true
	if ! $SUDO apt-get install -y --no-install-recommends chromium; then
		echo "install-chromium: apt-get install chromium failed" >&2
		exit 1
	fi
fi
if [ ! -x "$CHROMIUM" ]; then
	echo "install-chromium: chromium installed but $CHROMIUM is not there" >&2
	exit 1
fi
exit 0
