"""The verdict as JUnit XML: one test case per check, the form CI systems display.

``roll``, ``rollback`` and ``demo`` write one test suite; ``compare`` one suite per strategy, where a
failed check of a baseline that ``compare`` does not judge (naive) is ``<skipped>`` with its figure,
so the XML agrees with compare's exit code.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from sandbox.results import analysis
from sandbox.results.files import write_text_atomic
from sandbox.results.model import Report, Rollout
from sandbox.results.verdict import judged_in_compare
from sandbox.rollout import strategies


def junit_xml(report: Report) -> str:
    """A ``<testsuites>`` document with one ``<testcase>`` per verdict check; a failed check has a
    ``<failure>`` giving its figure and its limit, a check that could not run is ``<skipped>``
    with the reason. A mixed check's case carries the tail of its stdout and stderr."""
    run = report.run
    name = f"rolling-sandbox roll {run.from_version} -> {run.to_version} ({run.strategy})"
    return _document([(name, "rollout", report, True)])


def compare_junit_xml(reports: Sequence[Report]) -> str:
    """``compare``: one ``<testsuite>`` per strategy (``rolling-sandbox compare rolling:3 v1 -> v2``),
    one ``<testcase>`` per check, its classname ``compare.<strategy>``."""
    suites = []
    for report in reports:
        label = strategy_label(report.run)
        name = f"rolling-sandbox compare {label} {report.run.from_version} -> {report.run.to_version}"
        suites.append((name, f"compare.{label}", report, judged_in_compare(report.run)))
    return _document(suites)


def strategy_label(run: Rollout) -> str:
    """The strategy as ``compare --strategies`` spells it: ``rolling:3``, ``double-half``."""
    strategy, batch = str(run.strategy or "run"), run.batch
    return strategies.of(strategy).label(batch)


def _document(suites: Sequence[tuple[str, str, Report, bool]]) -> str:
    root = ET.Element("testsuites")
    totals = [0, 0, 0]  # tests, failures, skipped
    for name, classname, report, judged in suites:
        counts = _suite(root, name, classname, report, judged=judged)
        totals = [t + c for t, c in zip(totals, counts, strict=True)]
    root.set("tests", str(totals[0]))
    root.set("failures", str(totals[1]))
    if totals[2]:
        root.set("skipped", str(totals[2]))
    for element in root.iter():
        element.text = xml_text(element.text) if element.text is not None else None
        for key, value in element.attrib.items():
            element.set(key, xml_text(value))
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """``text`` without ANSI escapes (colours, cursor moves) and without the characters XML 1.0
    forbids (other control characters, lone surrogates), whatever a mixed check printed."""
    return _NOT_XML.sub("", _ANSI.sub("", text))


def _suite(root: ET.Element, name: str, classname: str, report: Report, *,
           judged: bool) -> tuple[int, int, int]:
    """One ``<testsuite>`` of ``report``'s checks; returns (tests, failures, skipped). A check of
    a report that is not ``judged`` (compare's naive baseline) is skipped, never failed."""
    checks = report.verdict.checks
    outputs = {r.name: r for r in report.run.mixed_checks}
    failed = sum(1 for c in checks if not c.passed)
    not_run = sum(1 for c in checks if c.skipped)
    failures, skipped = (failed, not_run) if judged else (0, failed + not_run)
    suite = ET.SubElement(root, "testsuite", name=name, tests=str(len(checks)), failures=str(failures),
                          errors="0", skipped=str(skipped), time=f"{float(report.run.duration_s or 0):.3f}")
    for check in checks:
        case = ET.SubElement(suite, "testcase", classname=classname, name=check.name)
        text = f"{check.name}: {check.value} (limit {check.limit})"
        if check.reason:
            text += f": {check.reason}"
        record = outputs.get(check.name)
        if record is not None and record.duration_s is not None:
            case.set("time", f"{record.duration_s:.3f}")
        if not check.passed and judged:
            ET.SubElement(case, "failure", message=text, type="VerdictCheckFailed").text = text
        elif not check.passed:
            text += f" ({report.run.strategy} is a baseline that compare does not judge)"
            ET.SubElement(case, "skipped", message=text)
        elif check.skipped:
            ET.SubElement(case, "skipped", message=check.reason or "not run")
        if record is not None:
            ET.SubElement(case, "system-out").text = record.stdout_tail or text
            if record.stderr_tail:
                ET.SubElement(case, "system-err").text = record.stderr_tail
        elif check.passed:
            ET.SubElement(case, "system-out").text = text
    steps = _canary_cases(suite, classname, report, judged=judged)
    suite.set("tests", str(len(checks) + steps[0]))
    suite.set("failures", str(failures + steps[1]))
    return len(checks) + steps[0], failures + steps[1], skipped


def _canary_cases(suite: ET.Element, classname: str, report: Report, *, judged: bool) -> tuple[int, int]:
    """One ``<testcase>`` per canary step (``canary_step_1`` ...): failed when its analysis failed;
    returns (cases, failures)."""
    run = report.run
    failures = 0
    for step in run.canary:
        case = ET.SubElement(suite, "testcase", classname=classname, name=f"canary_step_{step.step}")
        case.set("time", f"{step.window_s:.3f}")
        cells = dict(zip(analysis.TABLE_HEAD, analysis.table_row(step, str(run.to_version), str(run.from_version)),
                         strict=True))
        text = "; ".join(f"{k} {v}" for k, v in cells.items()) + (f": {step.reason}" if step.reason else "")
        if step.status == "failed" and judged:
            failures += 1
            ET.SubElement(case, "failure", message=text, type="CanaryAnalysisFailed").text = text
        else:
            ET.SubElement(case, "system-out").text = text
    return len(run.canary), failures


def write_junit(report: Report, path: Path) -> Path:
    return _write(junit_xml(report), path)


def write_compare_junit(reports: Sequence[Report], path: Path) -> Path:
    return _write(compare_junit_xml(reports), path)


def _write(text: str, path: Path) -> Path:
    return write_text_atomic(path, text)
