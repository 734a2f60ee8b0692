"""The verdict as JUnit XML (a roll's, and compare's one suite per strategy), parsed as a CI system would."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from sandbox import cli, commands
from sandbox.results.junit import compare_junit_xml, write_junit
from sandbox.results.model import Report

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
    path = write_junit(Report.from_json(REPORT), tmp_path / "ci" / "rollout.xml")
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
    root = ET.parse(write_junit(Report.from_json(report), tmp_path / "r.xml")).getroot()
    assert root.get("failures") == "0" and root.find("testsuite/testcase/failure") is None


def _compare_report(strategy: str, batch: int, dropped: int) -> Report:
    return Report.from_json({
        "kind": "roll", "from_version": "v1", "to_version": "v2", "strategy": strategy, "batch": batch,
        "duration_s": 4.5, "verdict": {"pass": dropped == 0, "checks": [
                {"name": "outcome", "pass": True, "value": "completed", "limit": "completed"},
                {"name": "dropped", "pass": dropped == 0, "value": dropped, "limit": 0}]}})


COMPARED = [_compare_report("one-at-a-time", 1, 0), _compare_report("rolling", 3, 2), _compare_report("naive", 1, 40)]


def test_compare_has_one_suite_per_strategy_and_naive_failures_are_skipped_not_failed() -> None:
    root = ET.fromstring(compare_junit_xml(COMPARED))
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("6", "1", "1")
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["rolling-sandbox compare one-at-a-time v1 -> v2",
                                               "rolling-sandbox compare rolling:3 v1 -> v2",
                                               "rolling-sandbox compare naive v1 -> v2"]
    assert [(s.get("failures"), s.get("skipped")) for s in suites] == [("0", "0"), ("1", "0"), ("0", "1")]
    rolling = {c.get("name"): c for c in suites[1].findall("testcase")}
    assert {c.get("classname") for c in rolling.values()} == {"compare.rolling:3"}
    failure = rolling["dropped"].find("failure")
    assert failure is not None and failure.get("message") == "dropped: 2 (limit 0)"
    skipped = suites[2].find("testcase[@name='dropped']/skipped")
    assert skipped is not None and (skipped.get("message") or "").startswith("dropped: 40 (limit 0)")
    assert suites[2].find("testcase/failure") is None


def test_compare_junit_flag_writes_the_strategies_it_ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    async def fake_compare(settings: Any, *, strategies: list[str], **_: Any) -> commands.CompareResult:
        seen["strategies"] = strategies
        return commands.CompareResult(reports=COMPARED, table={"rows": []}, exit_code=1, files={})

    monkeypatch.setattr(cli.commands, "compare", fake_compare)
    monkeypatch.setattr(cli.engines, "connect", lambda *_: object())
    monkeypatch.setattr(cli, "check_port_free", lambda _port: None)
    out = tmp_path / "ci" / "compare.xml"
    code = cli.main(["compare", "--project", "junitcmp", "--size", "4", "--strategies",
                     "one-at-a-time,rolling:3,naive", "--json", "--junit", str(out)])
    assert code == 1 and seen["strategies"] == ["one-at-a-time", "rolling:3", "naive"]
    assert [s.get("name") for s in ET.parse(out).getroot().findall("testsuite")][1] == \
        "rolling-sandbox compare rolling:3 v1 -> v2"


def test_whatever_a_mixed_check_printed_the_xml_is_valid(tmp_path: Path) -> None:
    noisy = "\x1b[31mFAIL\x1b[0m: \x00bad\x07 byte\x1b]0;title\x07 \ud800 \x0c end é"
    record = {"name": "mixed_check_1", "command": "./check.sh", "status": "failed", "exit_code": 1,
              "duration_s": 0.2, "stdout_tail": noisy, "stderr_tail": noisy}
    report = {**REPORT, "mixed_checks": [record], "verdict": {"pass": False, "checks": [
        {"name": "mixed_check_1", "pass": False, "value": 1, "limit": 0, "note": f"ran 0.2 s: {noisy}",
         "kind": "exit"}]}}
    path = write_junit(Report.from_json(report), tmp_path / "r.xml")
    root = ET.parse(path).getroot()  # parses: no character XML 1.0 forbids
    case = root.find("testsuite/testcase")
    assert case is not None
    assert case.findtext("system-out") == case.findtext("system-err") == "FAIL: bad byte   end é"
    failure = case.find("failure")
    assert failure is not None and "\x1b" not in (failure.get("message") or "")
    assert [p.name for p in tmp_path.iterdir()] == ["r.xml"]  # written atomically: no temporary file left
