#!/usr/bin/env bash
# Installs everything vers needs on a fresh Debian bookworm machine (root): Debian packages, then
# vers itself with its Python dependencies. Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(qemu-system-x86 qemu-utils fuse3 libfuse3-dev pkg-config busybox-static cpio
              e2fsprogs restic kmod xz-utils zstd git mmdebstrap gcc libc6-dev curl)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The "compat" editable mode puts the checkout on sys.path with a plain .pth line; the default
# mode installs an import hook that every Python start (every vers command) loads, ~40-80 ms here.
python3 -m pip install -q --disable-pip-version-check -e ".[test]" \
    --config-settings editable_mode=compat
# An editable install leaves vers uncompiled, and where $PYTHONDONTWRITEBYTECODE is set Python
# then compiles every module it imports at every start: byte-compile once (stale files are
# recompiled by mtime, and Python still reads them with that variable set).
python3 -m compileall -q vers >/dev/null
