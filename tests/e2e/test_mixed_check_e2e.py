"""--mixed-check and --seed against the real engine, NGINX and Locust: a check that passes while
both versions really answer, one that fails the run, and a seeded pick order that replays."""

from __future__ import annotations

import json
import shlex
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli, assert_passes
from tests.e2e.test_rollout_e2e import assert_fleet_on

pytestmark = pytest.mark.e2e

# GETs $SANDBOX_URL until both versions have answered (each answer must be a 200), prints them, exits 0;
# exits 1 if only one version answers 60 times in a row: the fleet was not mixed.
BOTH_ANSWER = """
import os, sys, urllib.request
seen = set()
for _ in range(60):
    with urllib.request.urlopen(os.environ["SANDBOX_URL"] + "/api/items/1", timeout=5) as r:
        assert r.status == 200, r.status
        seen.add(r.headers["X-App-Version"])
    if len(seen) == 2:
        break
print("versions answering:", " ".join(sorted(seen)))
sys.exit(0 if len(seen) == 2 else 1)
"""


def _python(code: str) -> str:
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def test_a_mixed_check_runs_while_both_versions_answer_and_passes(cli: Cli, tmp_path: Path) -> None:
    cli.run("up", "--size", "3", "--port", str(cli.port), check=True)
    junit = tmp_path / "rollout.xml"
    proc = cli.run("roll", "--to", "v2", "--users", "5", "--warmup", "1", "--cooldown", "1",
                   "--mixed-check", _python(BOTH_ANSWER), "--junit", str(junit), "--json")
    report = assert_passes(proc)
    [record] = report["mixed_checks"]
    assert record["status"] == "passed" and record["exit_code"] == 0, record
    assert record["stdout_tail"] == "versions answering: v1 v2\n"  # the fleet really was mixed meanwhile
    assert record["attached"] == {"v1": 1, "v2": 1}
    check = next(c for c in report["verdict"]["checks"] if c["name"] == "mixed_check_1")
    assert check["pass"] and not check.get("skipped")
    case = ET.parse(junit).getroot().find("testsuite/testcase[@name='mixed_check_1']")
    assert case is not None and case.find("failure") is None and case.find("skipped") is None
    assert case.findtext("system-out") == "versions answering: v1 v2\n"
    assert_fleet_on(cli, "v2", size=3)


def test_a_seed_gives_the_same_pick_order_and_a_failing_mixed_check_fails_the_run(cli: Cli, tmp_path: Path) -> None:
    """The seeded plan is the order the run stops servers in; a mixed check that fails during that run
    fails it, is named with its output, and the rollout itself still goes to the end, leaving a consistent fleet."""
    cli.run("up", "--size", "5", "--port", str(cli.port), check=True)
    plans = [cli.json("roll", "--to", "v2", "--dry-run", "--seed", "42", "--json") for _ in range(2)]
    order = plans[0]["pick_order"]
    assert plans[1]["pick_order"] == order and plans[0]["seed"] == 42
    assert sorted(s for batch in order for s in batch) == [1, 2, 3, 4, 5] and order != [[1], [2], [3], [4], [5]]
    text = cli.run("roll", "--to", "v2", "--dry-run", "--seed", "42", check=True).stdout
    assert "pick order (seed 42): " + " ".join(f"[{b[0]}]" for b in order) in text

    command = _python("import sys; print('contract broken', file=sys.stderr); sys.exit(3)")
    proc = cli.run("roll", "--to", "v2", "--no-load", "--seed", "42", "--mixed-check", command,
                   "--report", str(tmp_path))
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    verdict_line = proc.stdout.strip().splitlines()[-1]
    assert verdict_line.startswith("FAIL: mixed_check_1 exit 3 (must exit 0): ran "), verdict_line
    assert verdict_line.endswith(command)
    assert "    contract broken" in proc.stdout  # the last line of its stderr, under the check
    assert "outcome          completed" in proc.stdout  # the rollout itself went on to the end

    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["seed"], report["pick_order"]) == (42, order)
    stopped = [s["slot"] for s in report["steps"] if s["phase"] == "stop"]
    assert [[s] for s in stopped] == order  # the servers really went in that order
    assert_fleet_on(cli, "v2", size=5)
