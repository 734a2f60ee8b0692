"""What a new user hits first: the README's command for a room, and a roll whose CI job is cancelled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from sandbox.rollout.rehearsal import FIRST_SIGTERM
from tests.e2e.conftest import REPO, Cli, free_port

pytestmark = pytest.mark.e2e


def test_the_readmes_demo_for_a_room_runs_to_its_report(cli: Cli, tmp_path: Path) -> None:
    """`sandbox demo --dashboard --narrate --report reports/demo` (README), on 3 servers: three
    batches, so batch 1 ends with the merged reload that used to crash the narration."""
    report_dir = tmp_path / "demo"
    proc = cli.run("demo", "--dashboard", "--narrate", "--report", str(report_dir), "--size", "3",
                   "--port", str(cli.port), "--dashboard-port", str(free_port()))
    assert "Traceback" not in proc.stderr, proc.stderr
    report = json.loads((report_dir / "report.json").read_text())
    failed = [c["name"] for c in report["verdict"]["checks"] if not c["pass"]]
    assert failed == [] and proc.returncode == 0, (failed, report.get("like_for_like"), proc.returncode, proc.stderr)
    said = [line for line in proc.stderr.splitlines() if "narration" in line]
    assert len(said) == 7, said  # pick, then each step of batch 1, the last the merged reattach
    assert "for the next batch" in said[-1] and "passes once" in "".join(said)
    assert "reload" not in "".join(said).replace("no reload", "")  # the default LB never reloads


def test_sigterm_mid_roll_finishes_the_batch_and_reports(cli: Cli, tmp_path: Path) -> None:
    """A cancelled CI job: SIGTERM about 5 s into a roll of 4 servers. The roll finishes its batch,
    prints its summary, writes its report and exits 130; every server is attached right after."""
    cli.run("up", "--size", "4", "--port", str(cli.port), check=True)
    report_dir, out, err = tmp_path / "report", tmp_path / "roll.out", tmp_path / "roll.err"
    cmd = [sys.executable, "-m", "sandbox", "roll", "--project", cli.project, "--report", str(report_dir),
           "--warmup", "2", "--cooldown", "1"]
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        while "rollout-start" not in err.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
        time.sleep(2)  # about 5 s after the command started: batch 1 under way
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stdout_text, stderr_text = out.read_text(), err.read_text()
    assert proc.returncode == 130, (proc.returncode, stdout_text, stderr_text)
    assert FIRST_SIGTERM in stderr_text and "Traceback" not in stderr_text, stderr_text
    assert stdout_text.startswith("rolling-sandbox:"), stdout_text  # the summary
    report = json.loads((report_dir / "report.json").read_text())
    assert report["outcome"] == "interrupted"
    assert f"--project {cli.project}" in stderr_text  # the hints act on this project

    status = cli.json("status", "--json")
    instances = status["instances"]
    assert all(i["attached"] and i["state"] == "running" for i in instances), instances
    assert sorted(i["slot"] for i in instances) == [1, 2, 3, 4], instances  # one server per slot
    assert len(status["lb"]["upstreams"]) == 4
    serving = Counter(i["version"] for i in instances)
    assert set(serving) <= {"v1", "v2"} and serving["v2"] >= 1, serving  # batch 1 finished on v2
