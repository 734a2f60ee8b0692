#!/usr/bin/env bash
# Set up whatever is missing (scripts/setup.sh), then run `sandbox demo` with these arguments from the current
# directory, e.g.  scripts/demo.sh --report reports/demo
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
"$repo/scripts/setup.sh"
exec "$repo/.venv/bin/sandbox" demo "$@"
