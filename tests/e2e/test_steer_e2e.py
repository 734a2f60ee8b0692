"""Steering a running `roll` from a second process: pause, status, resume, abort, against the real
engine, real NGINX and real Locust."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import REPO, Cli

pytestmark = pytest.mark.e2e

SIZE = "3"
LOAD = ("--users", "10", "--warmup", "2", "--cooldown", "2")
PLANNED = "paused after batch 1 as planned"
HOLD_S = 5.0  # traffic through the paused, mixed fleet before it is resumed or aborted


class Roll:
    """`sandbox roll ... --json` in the background, its stderr read as it comes (a paused rollout
    keeps printing traffic lines: nobody must let its pipe fill)."""

    def __init__(self, cli: Cli, *args: str) -> None:
        cmd = [sys.executable, "-m", "sandbox", "roll", "--project", cli.project, *args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.err: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    def wait_for(self, text: str, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(text in line for line in self.err):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"never saw {text!r} (exit {self.proc.poll()}):\n{''.join(self.err)[-4000:]}")

    def end(self, timeout_s: float = 300) -> tuple[int, dict[str, Any], str]:
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        code = self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=10)
        self.proc.stdout.close()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        try:
            return code, json.loads(out), "".join(self.err)
        except ValueError as exc:
            raise AssertionError(f"not JSON (exit {code}):\n{out}\n{''.join(self.err)[-4000:]}") from exc


def steer(cli: Cli, command: str) -> tuple[dict[str, Any], float]:
    """`sandbox COMMAND --json` from a second process: its answer and how long the process took
    (its Python start included; ``answer_ms`` in the answer is the socket's round trip)."""
    t0 = time.monotonic()
    answer = cli.json(command, "--json", timeout=60)
    took = time.monotonic() - t0
    print(f"{command}: answered in {answer['answer_ms']} ms over the socket, {took:.2f} s for the whole process")
    return answer, took


def paused_window(report: dict[str, Any]) -> tuple[float, float]:
    """Unix times of the 'paused' event and of the event that ended the pause."""
    t0, steps = float(report["steps_t0"]), report["steps"]
    start = next(s for s in steps if s["phase"] == "paused")
    end = next(s for s in steps if s["phase"] in ("resumed", "abort") and s["t"] >= start["t"])
    return t0 + start["t"], t0 + end["t"]


def rows_between(report_dir: Path, t_from: float, t_to: float) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (report_dir / "requests.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if t_from <= r["t"] and (r.get("t_end") or r["t"]) <= t_to]


def hold_paused(cli: Cli) -> dict[str, Any]:
    """While the rollout is paused: status says so and shows the fleet mixed; a second `pause` is
    answered at once with the state it leaves. Returns status's JSON."""
    time.sleep(HOLD_S)
    status = cli.json("status", "--json")
    assert status["steering"]["state"] == "paused", status["steering"]
    attached = Counter(i["version"] for i in status["instances"] if i["attached"])
    assert attached == Counter({"v1": 2, "v2": 1}), status["instances"]  # batch 1 done, batch 2 not begun
    again, _ = steer(cli, "pause")
    assert again["state"] == "paused" and again["message"].startswith("already paused by the plan")
    return status


def test_pause_after_batch_holds_mixed_with_nothing_dropped_then_resume_completes(cli: Cli, tmp_path: Path) -> None:
    cli.run("up", "--size", SIZE, "--port", str(cli.port), check=True)
    roll = Roll(cli, "--to", "v2", "--pause-after-batch", "1", *LOAD, "--json", "--report", str(tmp_path))
    roll.wait_for(PLANNED)
    hold_paused(cli)
    answer, _ = steer(cli, "resume")
    assert answer["ok"] and answer["state"] == "running", answer
    _, report, err = roll.end()
    assert report["outcome"] == "completed", err[-3000:]
    assert report["requests"]["dropped"] == 0, report["requests"]
    t_paused, t_resumed = paused_window(report)
    assert t_resumed - t_paused >= HOLD_S
    during = rows_between(tmp_path, t_paused, t_resumed)
    assert len(during) > 20 and all(r["status"] == 200 for r in during), Counter(r["status"] for r in during)
    assert {r["version"] for r in during} == {"v1", "v2"}  # both served while paused
    resumed = next(s for s in report["steps"] if s["phase"] == "resumed")
    assert resumed["detail"]["by"] and resumed["detail"]["pid"] != roll.proc.pid  # a second process asked
    assert "resumed" in err and PLANNED in err
    status = cli.json("status", "--json")
    assert status["steering"] is None and {i["version"] for i in status["instances"]} == {"v2"}


def test_abort_from_pause_rolls_back_to_v1_with_nothing_dropped(cli: Cli, tmp_path: Path) -> None:
    cli.run("up", "--size", SIZE, "--port", str(cli.port), check=True)
    roll = Roll(cli, "--to", "v2", "--pause-after-batch", "1", *LOAD, "--json", "--report", str(tmp_path))
    roll.wait_for(PLANNED)
    hold_paused(cli)
    answer, _ = steer(cli, "abort")
    assert answer["ok"] and answer["state"] == "aborting", answer
    code, report, err = roll.end()
    assert code == 1 and report["outcome"] == "rolled_back", err[-3000:]
    assert report["requests"]["dropped"] == 0, report["requests"]
    phases = [s["phase"] for s in report["steps"]]
    assert phases.index("paused") < phases.index("abort") < phases.index("rollback-start") < phases.index(
        "rollback-end")
    t_paused, t_aborted = paused_window(report)
    during = rows_between(tmp_path, t_paused, t_aborted)
    assert len(during) > 20 and all(r["status"] == 200 for r in during)
    status = cli.json("status", "--json")
    assert status["steering"] is None
    assert all(i["version"] == "v1" and i["attached"] for i in status["instances"]), status["instances"]
    assert len(status["instances"]) == int(SIZE)


def test_steering_a_project_with_no_rollout_is_one_line_exit_2(cli: Cli) -> None:
    cli.run("up", "--size", "1", "--port", str(cli.port), check=True)
    proc = cli.run("pause")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"sandbox: error: project {cli.project!r}: no rollout is running (nothing to pause)\n"
    assert cli.json("status", "--json")["steering"] is None


def test_promote_skips_the_pause_and_a_pause_past_its_timeout_aborts(cli: Cli) -> None:
    cli.run("up", "--size", "2", "--port", str(cli.port), check=True)
    roll = Roll(cli, "--to", "v2", "--pause-after-batch", "1", "--no-load", "--json")
    roll.wait_for(PLANNED)
    answer, _ = steer(cli, "promote")
    assert answer["ok"] and answer["promoted"] and answer["state"] == "running", answer
    code, report, err = roll.end()
    assert (code, report["outcome"]) == (0, "completed"), err[-3000:]
    phases = [s["phase"] for s in report["steps"]]
    assert phases.index("paused") < phases.index("promote") < phases.index("resumed")
    # back the other way, paused, and nobody comes: --pause-timeout ends it as the default says (abort)
    roll = Roll(cli, "--to", "v1", "--pause-after-batch", "1", "--pause-timeout", "2s", "--no-load", "--json")
    code, report, err = roll.end()
    assert (code, report["outcome"]) == (1, "rolled_back"), err[-3000:]
    assert "aborted by --pause-timeout" in err
    timed_out = next(s for s in report["steps"] if s["phase"] == "pause-timeout")
    assert timed_out["detail"]["then"] == "abort" and timed_out["detail"]["paused_s"] >= 2
    assert {i["version"] for i in cli.json("status", "--json")["instances"]} == {"v2"}
