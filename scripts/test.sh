#!/usr/bin/env bash
# Set up whatever is missing (scripts/setup.sh: a no-op in about a second once done), lint (ruff), type-check
# (mypy --strict over sandbox/, and the test fakes against the Engine and LoadBalancer protocols), then run the
# whole test suite: fast unit tests and the end-to-end tests against the real Docker engine, NGINX and Locust,
# a file at a time on each of three workers (pytest-xdist; the end-to-end tests mostly wait on fleets, and the
# tests of one file share its fleets), the costliest files first (tests/durations.json, refreshed with
# scripts/suite_durations.py; xdist's own reorder by test count would start the few-test, minute-long
# end-to-end files last). Extra arguments go to pytest (`-n 0`: one process, in order).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check sandbox tests bench scripts
.venv/bin/mypy; .venv/bin/mypy --strict tests/unit/test_protocols.py tests/unit/fakes.py  # and the fakes held to the protocols
exec .venv/bin/python -m pytest -p no:cacheprovider -n 3 --dist loadfile --no-loadscope-reorder "$@"
