#!/usr/bin/env bash
# Set up everything rolling-sandbox needs, idempotently:
#   1. a virtual environment (.venv) with the package and its dependencies,
#   2. a Docker engine that answers (on Debian as root: installs docker.io and starts dockerd),
#   3. the images (base built offline with debootstrap, then app v1, app v2, lb; postgres, also with debootstrap).
# Where something cannot be done here, it stops with one line saying what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "setup: $*" >&2; }
die() { echo "setup: error: $*" >&2; exit 1; }

is_debian_root() { [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null; }
apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then apt-get update -qq >/dev/null; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# -- 1. Python ------------------------------------------------------------------------------------
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null || die "python3 is missing (3.11 or newer is needed)"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "Python 3.11 or newer is needed, found $("$PY" -V 2>&1)"
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    "$PY" -m venv .venv || die "could not create .venv (on Debian: apt-get install python3-venv)"
fi
# The install is editable, so only a changed pyproject.toml (dependencies, entry points) needs it again.
stamp=.venv/.installed-pyproject.sha256
if [ "$(cat "$stamp" 2>/dev/null)" = "$(sha256sum pyproject.toml)" ]; then
    say "the package and its dependencies are installed in .venv"
else
    say "installing the package and its dependencies into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
    sha256sum pyproject.toml >"$stamp"
fi

# -- 2. A Docker engine ---------------------------------------------------------------------------
engine_answers() { command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; }
if ! engine_answers; then
    if ! is_debian_root; then
        die "no Docker engine answers and this is not Debian as root, so setup cannot install one: install and start Docker (or set DOCKER_HOST), then run this again"
    fi
    if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
        say "installing Debian's docker.io"
        apt_install docker.io
    fi
    if ! engine_answers; then
        say "starting dockerd in the background (log: /var/log/rolling-sandbox-dockerd.log)"
        setsid dockerd >>/var/log/rolling-sandbox-dockerd.log 2>&1 </dev/null &
        for _ in $(seq 1 60); do
            engine_answers && break
            sleep 1
        done
        engine_answers || die "dockerd did not answer within 60 s; see /var/log/rolling-sandbox-dockerd.log"
    fi
fi
say "Docker engine answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"

# -- tools for the offline base image and the compose check (Debian as root only) --------------
if is_debian_root; then
    missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    # wrk: the independent HTTP client bench/run_all.py measures the LB's capacity with
    command -v wrk >/dev/null || missing+=(wrk)
    # a real browser for tests/e2e/test_dashboard_e2e.py (Selenium drives it through chromedriver)
    command -v chromium >/dev/null || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing ${missing[*]}"
        apt_install "${missing[@]}"
    fi
fi

# -- 3. Images ------------------------------------------------------------------------------------
say "building the images that are missing (the first offline base build takes about a minute)"
.venv/bin/sandbox images >/dev/null
say "ready: source .venv/bin/activate, then: sandbox up --size 9"
