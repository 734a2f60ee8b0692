"""Versions named ``old`` and ``new`` (the toy app's images under names of the user's choosing): the
dashboard's /api/state during the roll, the plan and the report name them, and never v1 or v2.

The toy app's own version header is switched off, so no answer says v1 or v2 by itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sandbox.fleet.images import ImageSet
from tests.e2e.conftest import REPO, Cli, free_port

pytestmark = pytest.mark.e2e

SIZE = 2
TOY_NAMES = ('"v1"', '"v2"')


def states(url: str, proc: subprocess.Popen[str], log: Path, timeout: float = 300) -> list[dict[str, Any]]:
    """Every /api/state the dashboard serves until the roll ends (it stops serving then)."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                seen.append(json.loads(r.read()))
        except OSError:
            pass  # not listening yet, or already closed
        time.sleep(0.3)
    assert proc.poll() is not None, f"roll still running after {timeout} s:\n{log.read_text()}"
    return seen


def test_the_dashboard_and_the_report_name_the_declared_versions(cli: Cli, image_set: ImageSet,
                                                                  tmp_path: Path) -> None:
    cli.run("up", "--size", str(SIZE), "--port", str(cli.port), "--image", f"old={image_set.app['v1']}",
            "--image", f"new={image_set.app['v2']}", "--health-path", "/healthz",
            "--env", "APP_VERSION_HEADER=0", check=True)
    plan = cli.json("roll", "--dry-run", "--json")
    assert (plan["from"], plan["to"]) == ("old", "new")
    report_dir, log, port = tmp_path / "report", tmp_path / "roll.log", free_port()
    cmd = [sys.executable, "-m", "sandbox", "roll", "--project", cli.project, "--dashboard", "--dashboard-port",
           str(port), "--report", str(report_dir), "--users", "8", "--warmup", "2", "--cooldown", "2",
           "--min-requests", "20"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        seen = states(f"http://127.0.0.1:{port}/api/state", proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()

    planned = [s for s in seen if s["run"].get("versions")]
    assert planned, f"no state with the plan's versions among {len(seen)}:\n{output}"
    run, promise = planned[-1]["run"], planned[-1]["promise"]
    assert (run["from"], run["to"], run["versions"]) == ("old", "new", ["old", "new"]), run
    assert (promise["floor"], promise["peak"], promise["batches"]) == (
        plan["min_serving"], plan["peak_containers"], plan["batches"]), promise  # the plan's own figures
    assert any(s["versions"].get("old") for s in planned) and any(s["versions"].get("new") for s in planned)
    assert all(set(s["versions"]) <= {"old", "new"} for s in seen), [s["versions"] for s in seen]
    served = json.dumps(seen)
    assert not any(name in served for name in TOY_NAMES), [n for n in TOY_NAMES if n in served]

    text = (report_dir / "report.json").read_text()
    report = json.loads(text)
    assert (report["from_version"], report["to_version"], report["outcome"]) == ("old", "new", "completed")
    by_version = report["requests"]["by_version"]
    assert by_version.get("old", 0) > 0 and by_version.get("new", 0) > 0, by_version
    assert not any(name in text for name in TOY_NAMES), [n for n in TOY_NAMES if n in text]
    failed = [c["name"] for c in report["verdict"]["checks"] if not c["pass"]]
    assert failed == [], (failed, output)  # the gate is strict: a healthy roll passes every check
