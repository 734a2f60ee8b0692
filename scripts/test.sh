#!/usr/bin/env bash
# Set up whatever is missing (scripts/setup.sh: a no-op in about a second once done), lint (ruff), type-check
# (mypy --strict over sandbox/, and the test fakes against the Engine and LoadBalancer protocols), then run the
# whole test suite: fast unit tests, then the end-to-end tests against the real Docker engine, NGINX and Locust.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check sandbox tests bench
.venv/bin/mypy; .venv/bin/mypy --strict tests/unit/test_protocols.py tests/unit/fakes.py  # and the fakes held to the protocols
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
