#!/usr/bin/env bash
# Set up whatever is missing (scripts/setup.sh: a no-op in about a second once done), lint (ruff), type-check
# (mypy --strict over sandbox/, and the test fakes against the Engine and LoadBalancer protocols), then run the
# whole test suite: fast unit tests and the end-to-end tests against the real Docker engine, NGINX and Locust,
# a file at a time on each of three workers (pytest-xdist; the end-to-end tests mostly wait on fleets, and the
# tests of one file share its fleets), the costliest files first (tests/durations.json, refreshed with
# scripts/suite_durations.py; xdist's own reorder by test count would start the few-test, minute-long
# end-to-end files last). Extra arguments go to both pytest runs (`-n 0`: one process, in order).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check sandbox tests bench
.venv/bin/mypy; .venv/bin/mypy --strict tests/unit/test_protocols.py tests/unit/fakes.py  # and the fakes held to the protocols
# Every test but those that put the engine into a swarm and take it out again; then those, alone: leaving a
# swarm breaks name resolution for containers already running on bridge networks (moby/moby#45144), so they
# never overlap other fleets. Exit code 5 (nothing selected, e.g. one file named) counts only when neither run
# selected anything.
status=0
SANDBOX_TEST_PHASE=shared .venv/bin/python -m pytest -p no:cacheprovider -n 3 --dist loadfile --no-loadscope-reorder "$@" || status=$?
swarm=0
SANDBOX_TEST_PHASE=swarm .venv/bin/python -m pytest -p no:cacheprovider -n 0 "$@" || swarm=$?
if [ "$status" -eq 5 ] && [ "$swarm" -ne 5 ]; then status=$swarm
elif [ "$status" -eq 0 ] && [ "$swarm" -ne 5 ]; then status=$swarm
fi
exit "$status"
