"""Issue 19's figures for the images the project did not write: `sandbox doctor` on each, timed.

    .venv/bin/python bench/doctor_images.py [--out bench/DOCTOR.md]

Builds examples/httpbin (gunicorn) and examples/debian-nginx (Debian's nginx-light, stock config),
runs `sandbox doctor --json` once against each (doctor starts and removes a fleet of its own), and
writes each image's findings (name, status, the evidence in one line, the fix), the wall time of
each run from start to exit, and the generated Kubernetes snippet for httpbin, under the
provenance header. Debian's NGINX is diagnosed twice: with SIGTERM (its fast shutdown, Docker's
default) and with SIGQUIT (its graceful one, what Debian's own service unit sends).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provenance import PY, header, publish, shown  # bench/provenance.py (this script's directory)

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Subject:
    """One image and the app contract doctor is given for it."""

    title: str
    build: str
    args: tuple[str, ...]


HTTPBIN = Subject("httpbin 0.10.1 under gunicorn (examples/httpbin)", "examples/httpbin/build.sh",
                  ("--image", "0.10.1=rolling-sandbox-example/httpbin:0.10.1", "--health-path", "/status/200",
                   "--path", "/get"))
NGINX = ("--image", "bookworm=rolling-sandbox-example/debian-nginx:bookworm", "--app-port", "80",
         "--health-path", "/", "--read-only", "false")  # it writes its pid, logs and temp files under /run, /var
SUBJECTS = (HTTPBIN,
            Subject("Debian's nginx-light, stock config (examples/debian-nginx), stopped with SIGTERM",
                    "examples/debian-nginx/build.sh", NGINX),
            Subject("Debian's nginx-light, stock config (examples/debian-nginx), stopped with SIGQUIT",
                    "examples/debian-nginx/build.sh", (*NGINX, "--stop-signal", "SIGQUIT")))


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def section(subject: Subject, cmd: list[str], proc: subprocess.CompletedProcess[str], wall_s: float) -> list[str]:
    """The run's command, exit and wall time, then its findings as a table; the stderr tail if no JSON."""
    lines = [f"## {subject.title}", "", f"- {shown(cmd)}",
             f"- exit {proc.returncode}, {wall_s:.1f} s wall time from start to exit (fleet up and down included)"]
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        return [*lines, "", "No JSON from doctor; the end of its stderr:", "", "```",
                proc.stderr.strip()[-1500:], "```", ""]
    lines += [f"- {out['took_s']:.1f} s of experiments (doctor's own count)", "",
              "| finding | status | evidence | fix |", "| --- | --- | --- | --- |"]
    for f in out["findings"]:
        lines.append(f"| `{f['name']}` | {f['status']} | {cell(f['summary'])} | {cell(f.get('fix') or '-')} |")
    return [*lines, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results here too (bench/DOCTOR.md)")
    parser.add_argument("--project", default="bench-doctor")
    args = parser.parse_args()
    head = header("sandbox doctor on images the project did not write (issue 19)", "bench/doctor_images.py",
                  sys.argv[1:], ["each doctor run once, its wall time measured around the whole command"])
    lines: list[str] = []
    k8s = ""
    for build in dict.fromkeys(s.build for s in SUBJECTS):
        done = subprocess.run(["sh", build], cwd=REPO, capture_output=True, text=True, timeout=1800)
        if done.returncode:
            print(f"{build} failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
            return 1
    for subject in SUBJECTS:
        cmd = [*PY, "doctor", "--project", args.project, *subject.args, "--json"]
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
        wall_s = time.monotonic() - start
        lines += section(subject, cmd, proc, wall_s)
        if subject is HTTPBIN:
            try:
                k8s = json.loads(proc.stdout)["snippets"]["kubernetes"]
            except ValueError:
                k8s = "# doctor printed no JSON for httpbin (see above)"
    lines += ["## The Kubernetes snippet doctor generated for httpbin", "", "```yaml", k8s.rstrip(), "```", ""]
    publish([*head, *lines], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
