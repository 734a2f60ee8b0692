#!/usr/bin/env bash
# Lint (ruff), then run the whole test suite: fast unit tests, then the end-to-end tests against the real
# Docker engine, NGINX and Locust. Run scripts/setup.sh first. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "test: error: .venv is missing; run scripts/setup.sh first" >&2; exit 1; }
timeout 10 docker info >/dev/null 2>&1 \
    || { echo "test: error: no Docker engine answers; run scripts/setup.sh first" >&2; exit 1; }
.venv/bin/ruff check sandbox tests bench
.venv/bin/mypy; .venv/bin/mypy --strict tests/unit/test_protocols.py tests/unit/fakes.py  # and the fakes held to the protocols
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
