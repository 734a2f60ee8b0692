"""sandbox.results.model: each check shows its own figure and limit, and a report survives its JSON whole."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from sandbox.results.junit import junit_xml
from sandbox.results.markdown import markdown_page
from sandbox.results.model import (
    P99,
    Alive,
    AtLeast,
    Check,
    Equals,
    ExitZero,
    Figures,
    MixedRecord,
    Report,
    Rollout,
    Seconds,
    Verdict,
)
from sandbox.results.text import summary_text
from sandbox.results.verdict import verdict

P99_SKIP = P99("p99_ratio", "SKIP", None, 3.0, "too few answers", rollout_p99_ms=None, steady_p99_ms=None,
               max_p99_ms=250.0, samples={"steady": 12, "rollout": 80}, min_samples=200)


@pytest.mark.parametrize(("check", "line"), [
    (Check("dropped", "FAIL", 3, 0), "FAIL dropped              3 (max 0)"),
    (Check("slow", "PASS", 0, 0, unit=" over 2000 ms"), "PASS slow                 0 over 2000 ms (max 0)"),
    (Seconds("stall_s", "FAIL", 5.021, 1.0), "FAIL stall_s              5.02 s (max 1.00 s)"),
    (AtLeast("requests_measured", "PASS", None, 100, "not measured: no load"),
     "PASS requests_measured    - (min 100): not measured: no load"),
    (Equals("outcome", "FAIL", "rolled_back", "completed"),
     "FAIL outcome              rolled_back (must be completed)"),
    (Alive("load_alive", "FAIL", False, True), "FAIL load_alive           no (must be yes)"),
    (ExitZero("mixed_check_1", "NOT_RUN", None, 0, "never mixed: ./a.sh"),
     "SKIP mixed_check_1        - (must exit 0): never mixed: ./a.sh"),
    (P99("p99_ratio", "PASS", 10.0, 3.0, rollout_p99_ms=20.0, steady_p99_ms=2.0, max_p99_ms=250.0),
     "PASS p99_ratio            20.0 ms, 10.00x steady (max 250 ms; 3.00x if steady was over it)"),
    (P99_SKIP, "SKIP p99_ratio            - (max 250 ms; 3.00x if steady was over it): too few answers"),
])
def test_each_check_shows_its_figure_and_limit_and_survives_its_json(check: Check, line: str) -> None:
    assert check.line() == line
    data = json.loads(json.dumps(check.to_json()))
    assert data.items() >= {"name": check.name, "pass": check.passed, "value": check.value,
                            "limit": check.limit, "status": check.status}.items()
    assert data.get("skipped", False) is check.skipped
    assert Check.from_json(data) == check


def test_a_check_stored_before_kinds_and_statuses_reads_back_as_it_was_judged() -> None:
    assert Check.from_json({"name": "dropped", "pass": False, "value": 2, "limit": 0}).status == "FAIL"
    skipped = Check.from_json({"name": "mixed_check_1", "pass": True, "value": None, "limit": 0, "skipped": True})
    assert (skipped.status, skipped.passed, skipped.result) == ("SKIP", True, "SKIP")


def test_the_verdict_line_names_what_failed_and_what_did_not_run() -> None:
    mixed = ExitZero("mixed_check_2", "FAIL", 3, 0, "ran 1.5 s: ./t.sh")
    held = Verdict((Check("dropped", "PASS", 0, 0), P99_SKIP))
    assert held.passed and held.line() == "PASS: all 2 checks held (1 not run: p99_ratio)"
    assert Verdict((Check("dropped", "FAIL", 2, 0), mixed)).line() == (
        "FAIL: dropped 2 (max 0); mixed_check_2 exit 3 (must exit 0): ran 1.5 s: ./t.sh")
    assert Verdict(()).line() == "FAIL: no checks" and not Verdict(()).passed
    assert Verdict((mixed,)).cell() == "FAIL: mixed_check_2"


def _report() -> Report:
    record = MixedRecord("mixed_check_1", "./a.sh", "passed", 0, 0.2, "ok\n", "", attached={"v1": 2, "v2": 1},
                         batch=1)
    run = Rollout(strategy="rolling", size=3, batch=1, from_version="v1", to_version="v2", outcome="completed",
                  load=False, pick_order=((2,), (1,)), mixed_checks=(record,))
    figures = Figures()
    return Report(run, figures, verdict(run, figures), extra={"faults": [], "files": {"json": "/r/report.json"}})


def test_a_report_survives_its_json_with_what_others_added() -> None:
    report = _report()
    data: dict[str, Any] = json.loads(json.dumps(report.to_json()))
    assert data["mixed_checks"][0]["attached"] == {"v1": 2, "v2": 1} and "reason" not in data["mixed_checks"][0]
    assert (data["faults"], data["files"]) == ([], {"json": "/r/report.json"})
    assert Report.from_json(data) == report


def test_every_renderer_reads_the_same_object() -> None:
    report = _report()
    assert "rolling-sandbox: rolling, 3 servers, batch 1, v1 -> v2" in summary_text(report)
    assert summary_text(report).splitlines()[-1] == report.verdict.line()
    assert f"**{report.verdict.line()}**" in markdown_page(report)
    suite = ET.fromstring(junit_xml(report)).find("testsuite")
    assert suite is not None and suite.get("tests") == str(len(report.verdict.checks))
