"""The verdict as JUnit XML: one test case per check, the form CI systems display."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def junit_xml(report: Mapping[str, Any]) -> str:
    """A ``<testsuites>`` document with one ``<testcase>`` per verdict check; a failed check has a
    ``<failure>`` giving its figure and its limit, a check that could not run is ``<skipped>``
    with the reason. A mixed check's case carries the tail of its stdout and stderr."""
    checks = list((report.get("verdict") or {}).get("checks") or [])
    outputs = {str(r.get("name")): r for r in report.get("mixed_checks") or []}
    name = (f"rolling-sandbox {report.get('kind') or 'roll'} {report.get('from_version')} -> "
            f"{report.get('to_version')} ({report.get('strategy')})")
    failures = sum(1 for c in checks if not c.get("pass"))
    skipped = sum(1 for c in checks if c.get("skipped"))
    suites = ET.Element("testsuites", tests=str(len(checks)), failures=str(failures), skipped=str(skipped))
    suite = ET.SubElement(suites, "testsuite", name=name, tests=str(len(checks)), failures=str(failures),
                          errors="0", skipped=str(skipped), time=f"{float(report.get('duration_s') or 0):.3f}")
    for check in checks:
        case = ET.SubElement(suite, "testcase", classname="rollout", name=str(check.get("name")))
        text = f"{check.get('name')}: {check.get('value')} (limit {check.get('limit')})"
        if check.get("note"):
            text += f": {check['note']}"
        record = outputs.get(str(check.get("name")))
        if record is not None and record.get("duration_s") is not None:
            case.set("time", f"{float(record['duration_s']):.3f}")
        if not check.get("pass"):
            ET.SubElement(case, "failure", message=text, type="VerdictCheckFailed").text = text
        elif check.get("skipped"):
            ET.SubElement(case, "skipped", message=str(check.get("note") or "not run"))
        if record is not None:
            ET.SubElement(case, "system-out").text = str(record.get("stdout_tail") or "") or text
            if record.get("stderr_tail"):
                ET.SubElement(case, "system-err").text = str(record["stderr_tail"])
        elif check.get("pass"):
            ET.SubElement(case, "system-out").text = text
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(report: Mapping[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(junit_xml(report))
    return path
