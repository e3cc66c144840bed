#!/usr/bin/env bash
# Installs what `make demo` and `make test` need, and nothing when it is already there:
#   - redis-server and prometheus (+ promtool) from Debian packages (as root; otherwise one clear message);
#   - rabbitmq-server from its Debian package, optionally (only `--broker rabbitmq` runs and their tests need
#     it): as root it is installed when missing; when apt cannot install it, a warning says so and the rest
#     goes on;
#   - the virtualenv in .venv, exactly from uv.lock (uv itself is pinned and installed with pip), with every
#     dependency group (`uv sync --frozen`: the app's runtime plus the default groups, lab and dev).
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
PY=${PYTHON:-python3}

missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
have redis-server || missing+=(redis-server)
have prometheus || missing+=(prometheus)
have promtool || { [[ " ${missing[*]} " == *" prometheus "* ]] || missing+=(prometheus); }
optional=()
# The script lab/rabbitmq.py runs (the package's own /usr/sbin wrapper is not used).
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || optional+=(rabbitmq-server)

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "celery-lab needs Python >= 3.11 as '$PY' (set PYTHON=/path/to/python3.11 to choose another)." >&2
  exit 2
fi
if [ ! -x .venv/bin/python ] && ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
  missing+=(python3-venv)
fi

is_root_with_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }
apt_updated=0
# apt_install PKG...: apt-get's status, never exits. policy-rc.d keeps the packages' own services from
# starting: the lab starts its own, on free ports.
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ $apt_updated = 0 ]; then
    apt-get update -qq || return $?
    apt_updated=1
  fi
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.celery-lab
  chmod +x /usr/sbin/policy-rc.d.celery-lab
  local had_policy=0 rc=0
  if [ -e /usr/sbin/policy-rc.d ]; then had_policy=1; fi
  [ $had_policy = 1 ] || cp /usr/sbin/policy-rc.d.celery-lab /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
  [ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d
  rm -f /usr/sbin/policy-rc.d.celery-lab
  return $rc
}

if [ ${#missing[@]} -gt 0 ]; then
  if is_root_with_apt; then
    echo "installing Debian packages: ${missing[*]}" >&2
    if ! apt_install "${missing[@]}"; then
      echo "celery-lab: apt-get could not install ${missing[*]} (see its messages above)." >&2
      exit 2
    fi
  else
    echo "celery-lab needs the Debian packages: ${missing[*]}." >&2
    echo "Install them as root: apt-get install ${missing[*]}   (then run this command again)" >&2
    exit 2
  fi
fi

if [ ${#optional[@]} -gt 0 ]; then
  if is_root_with_apt; then
    echo "installing optional Debian packages: ${optional[*]}" >&2
    if ! apt_install "${optional[@]}"; then
      echo "warning: apt-get could not install ${optional[*]}; continuing without it (only --broker rabbitmq needs it)." >&2
    fi
  else
    echo "note: ${optional[*]} is not installed (optional, for --broker rabbitmq): apt-get install ${optional[*]}" >&2
  fi
fi

if [ ! -x .venv/bin/uv ] || [ "$(.venv/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
UV_PYTHON=.venv/bin/python .venv/bin/uv sync --frozen --quiet
