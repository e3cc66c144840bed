#!/usr/bin/env bash
# Installs what `make demo` and `make test` need, and nothing when it is already there:
#   - redis-server and prometheus (+ promtool) from Debian packages (as root; otherwise one clear message);
#   - the virtualenv in .venv, exactly from uv.lock (uv itself is pinned and installed with pip).
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
PY=${PYTHON:-python3}

missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
have redis-server || missing+=(redis-server)
have prometheus || missing+=(prometheus)
have promtool || { [[ " ${missing[*]} " == *" prometheus "* ]] || missing+=(prometheus); }

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "celery-lab needs Python >= 3.11 as '$PY' (set PYTHON=/path/to/python3.11 to choose another)." >&2
  exit 2
fi
if [ ! -x .venv/bin/python ] && ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
  missing+=(python3-venv)
fi

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps the packages' own services from starting: the lab starts its own, on free ports.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.celery-lab
    chmod +x /usr/sbin/policy-rc.d.celery-lab
    had_policy=0; [ -e /usr/sbin/policy-rc.d ] && had_policy=1
    [ $had_policy = 1 ] || cp /usr/sbin/policy-rc.d.celery-lab /usr/sbin/policy-rc.d
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d
    rm -f /usr/sbin/policy-rc.d.celery-lab
  else
    echo "celery-lab needs the Debian packages: ${missing[*]}." >&2
    echo "Install them as root: apt-get install ${missing[*]}   (then run this command again)" >&2
    exit 2
  fi
fi

if [ ! -x .venv/bin/uv ] || [ "$(.venv/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
UV_PYTHON=.venv/bin/python .venv/bin/uv sync --frozen --quiet
