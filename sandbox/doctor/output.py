"""Doctor's findings and snippets as text for people, JSON, Markdown with the evidence, and JUnit.

Every form renders the same :class:`Diagnosis`; the files are written atomically.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.doctor.findings import Finding, exit_code, judge
from sandbox.doctor.measure import Measurements
from sandbox.doctor.snippets import Recommendation, all_snippets
from sandbox.results.files import write_text_atomic
from sandbox.results.junit import xml_text

_LANG = {"kubernetes": "yaml", "compose": "yaml", "nomad": "hcl", "kamal": "yaml"}


@dataclass(frozen=True)
class Diagnosis:
    """One doctor run: the image, what was measured, the findings and the settings to paste."""

    image: str
    measurements: Measurements
    findings: list[Finding]
    recommendation: Recommendation
    snippets: dict[str, str]

    @classmethod
    def of(cls, image: str, m: Measurements) -> Diagnosis:
        recommendation = Recommendation.of(m)
        return cls(image, m, judge(m), recommendation, all_snippets(recommendation))

    @property
    def exit_code(self) -> int:
        return exit_code(self.findings)

    def as_json(self) -> dict[str, Any]:
        return {"image": self.image, "took_s": self.measurements.took_s,
                "findings": [f.as_json() for f in self.findings],
                "recommendation": self.recommendation.as_json(), "snippets": self.snippets,
                "measurements": self.measurements.as_json()}


def text(d: Diagnosis) -> str:
    """The terminal summary: one line per finding, its failures and fix, then the Kubernetes snippet."""
    lines = [f"doctor: {d.image} ({d.measurements.took_s:.0f} s of experiments)"]
    for f in d.findings:
        lines.append(f"  {f.status:<4}  {f.name:<14} {f.summary}")
        lines += [f"{'':22}failed: {one}" for one in f.failures]
        if f.fix:
            lines.append(f"{'':22}fix: {f.fix}")
    lines += ["", "Kubernetes (the other engines: --json or --report DIR):", d.snippets["kubernetes"]]
    return "\n".join(lines)


def markdown(d: Diagnosis) -> str:
    """The report: findings table, each finding's evidence and failed requests, every snippet."""
    out = [f"# sandbox doctor: {d.image}", "", f"{d.measurements.took_s:.0f} s of experiments.", "",
           "| finding | status | what was seen |", "| --- | --- | --- |"]
    out += [f"| {f.name} | {f.status} | {f.summary.replace('|', '/')} |" for f in d.findings]
    for f in d.findings:
        out += ["", f"## {f.name}: {f.status}", "", f.summary, ""]
        out += [f"- {key}: `{json.dumps(value)}`" for key, value in f.evidence.items()]
        if f.failures:
            out += ["", "Failed requests (first ones):", ""] + [f"- {one}" for one in f.failures]
        if f.fix:
            out += ["", f"**Fix:** {f.fix}"]
    out += ["", "# Settings to paste"]
    for name, snippet in d.snippets.items():
        out += ["", f"## {name}", "", f"```{_LANG[name]}", snippet.rstrip("\n"), "```"]
    return "\n".join(out) + "\n"


def junit(d: Diagnosis) -> str:
    """One ``<testcase>`` per finding: a FAIL is a ``<failure>``, a WARN passes with its text in system-out."""
    failed = sum(f.status == "FAIL" for f in d.findings)
    root = ET.Element("testsuites", tests=str(len(d.findings)), failures=str(failed))
    suite = ET.SubElement(root, "testsuite", name=f"rolling-sandbox doctor {d.image}", tests=str(len(d.findings)),
                          failures=str(failed), errors="0", time=f"{d.measurements.took_s:.3f}")
    for f in d.findings:
        case = ET.SubElement(suite, "testcase", classname="doctor", name=f.name)
        body = "\n".join([f"{f.status}: {f.summary}", *(f"failed: {one}" for one in f.failures),
                          *([f"fix: {f.fix}"] if f.fix else [])])
        if f.status == "FAIL":
            ET.SubElement(case, "failure", message=xml_text(f.summary), type="DoctorFinding").text = xml_text(body)
        else:
            ET.SubElement(case, "system-out").text = xml_text(body)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_report(d: Diagnosis, directory: Path) -> list[Path]:
    """``doctor.md`` and ``doctor.json`` in ``directory``; the paths written."""
    return [write_text_atomic(directory / "doctor.md", markdown(d)),
            write_text_atomic(directory / "doctor.json", json.dumps(d.as_json(), indent=2) + "\n")]


def write_junit(d: Diagnosis, path: Path) -> Path:
    return write_text_atomic(path, junit(d))
