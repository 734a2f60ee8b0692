"""Write tests/durations.json, the seconds each test file took, from the JUnit files of a whole run.

    .venv/bin/python -m pytest ... --junitxml=/tmp/shared.xml      # e.g. scripts/test.sh --junitxml=...
    .venv/bin/python scripts/suite_durations.py /tmp/shared.xml [more.xml ...]

tests/conftest.py orders the suite's files by this table, costliest first, so that scripts/test.sh's
workers (``--dist loadfile --no-loadscope-reorder``) never start a long end-to-end file after the rest
are done. A file the table does not know runs early if it is end-to-end (it counts as a minute), last
otherwise; a stale table only orders files less well, it never changes what runs.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "durations.json"


def source_file(classname: str) -> str | None:
    """The repository path of the test file a JUnit ``classname`` (``tests.e2e.test_x[.TestClass]``) names."""
    parts = classname.split(".")
    for end in range(len(parts), 0, -1):
        path = Path(*parts[:end]).with_suffix(".py")
        if (REPO / path).is_file():
            return path.as_posix()
    return None


def file_seconds(junit_files: list[Path]) -> dict[str, float]:
    """Seconds per test file (setup, call and teardown of each test case) over the given JUnit files."""
    seconds: Counter[str] = Counter()
    for junit in junit_files:
        for case in ET.parse(junit).iter("testcase"):
            path = source_file(case.get("classname", ""))
            if path:
                seconds[path] += float(case.get("time") or 0.0)
    return {path: round(s, 1) for path, s in sorted(seconds.items(), key=lambda kv: (-kv[1], kv[0]))}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: scripts/suite_durations.py JUNIT.xml [JUNIT.xml ...]", file=sys.stderr)
        return 2
    table = file_seconds([Path(a) for a in argv])
    OUT.write_text(json.dumps(table, indent=1) + "\n")
    print(f"{OUT.relative_to(REPO)}: {len(table)} files, {sum(table.values()):.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
