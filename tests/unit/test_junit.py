"""The verdict as JUnit XML, parsed as a CI system would."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from sandbox.results.junit import write_junit

REPORT = {
    "kind": "roll", "from_version": "0.10.1", "to_version": "0.10.2", "strategy": "one-at-a-time",
    "duration_s": 20.019,
    "verdict": {"pass": False, "checks": [
        {"name": "outcome", "pass": True, "value": "completed", "limit": "completed"},
        {"name": "dropped", "pass": False, "value": 3, "limit": 0},
        {"name": "load_alive", "pass": True, "value": True, "limit": True},
    ]},
}


def test_one_test_case_per_check_and_failures_carry_figure_and_limit(tmp_path: Path) -> None:
    path = write_junit(REPORT, tmp_path / "ci" / "rollout.xml")
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites" and (root.get("tests"), root.get("failures")) == ("3", "1")
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == "rolling-sandbox roll 0.10.1 -> 0.10.2 (one-at-a-time)"
    assert suite.get("time") == "20.019"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == ["outcome", "dropped", "load_alive"]
    failure = cases["dropped"].find("failure")
    assert failure is not None and failure.get("message") == "dropped: 3 (limit 0)"
    assert cases["outcome"].find("failure") is None and cases["load_alive"].find("failure") is None


def test_a_passing_verdict_has_no_failure(tmp_path: Path) -> None:
    report = {**REPORT, "verdict": {"pass": True, "checks": [REPORT["verdict"]["checks"][0]]}}  # type: ignore[index]
    root = ET.parse(write_junit(report, tmp_path / "r.xml")).getroot()
    assert root.get("failures") == "0" and root.find("testsuite/testcase/failure") is None
