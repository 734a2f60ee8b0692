"""`roll --detach-lag` and the toy app's stop switches on one real fleet of 2 servers, rolled three times.

1. v1 servers with ``APP_STOP_MODE=exit-now``, rolled with ``--detach-lag 2``: they exit at the
   signal while the load balancer still routes to them for 2 s, so requests drop.
2. v2 servers that keep serving 3 s after SIGTERM (``APP_STOP_DELAY=3``, what a Kubernetes
   ``preStop`` sleep does), rolled the same way: nothing drops.
3. v1 servers with ``APP_STOP_MODE=ignore`` exit only when killed at the stop timeout; the v2
   servers that replace them with ``APP_READY_EARLY_S`` pass /healthz while their real routes
   answer 503.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from typing import Any

import pytest

from sandbox.rollout.executor import Timing
from tests.e2e.conftest import Cli

pytestmark = pytest.mark.e2e

LOAD = ("--users", "10", "--warmup", "2", "--cooldown", "1")
SIGKILL_EXIT = 137


def _status(address: str, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _report(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        report: dict[str, Any] = json.loads(proc.stdout)
    except ValueError as exc:
        raise AssertionError(f"not JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from exc
    return report


def _check(report: dict[str, Any], name: str) -> str:
    status: str = next(c for c in report["verdict"]["checks"] if c["name"] == name)["status"]
    return status


def _events(report: dict[str, Any], phase: str) -> list[dict[str, Any]]:
    return [s for s in report["steps"] if s["phase"] == phase]


def test_detach_lag_drops_with_exit_now_not_with_a_stop_delay_then_ignore_and_ready_early(cli: Cli) -> None:
    cli.run("up", "--size", "2", "--port", str(cli.port), "--env", "APP_STOP_MODE=exit-now", check=True)

    # 1. exit-now under a 2 s lag: requests still routed to a gone server drop
    proc = cli.run("roll", "--to", "v2", "--detach-lag", "2", "--max-error-ratio", "1", *LOAD, "--json",
                   "--set-env", "APP_STOP_MODE=graceful", "--set-env", "APP_STOP_DELAY=3")
    report = _report(proc)
    assert proc.returncode == 1 and report["outcome"] == "completed", proc.stderr[-3000:]
    assert report["detach_lag_s"] == 2.0
    assert report["requests"]["dropped"] > 0 and _check(report, "dropped") == "FAIL"
    terms = _events(report, "term")
    assert [t["detail"]["lag_s"] for t in terms] == [2.0, 2.0]
    # each exited at its signal, while still attached: the rollout names it
    assert {f["instance"] for f in report["faults"] if f["fault"] == "died"} == {t["instance"] for t in terms}

    # 2. the same lag against servers that keep serving 3 s after the signal: nothing drops
    proc = cli.run("roll", "--to", "v1", "--detach-lag", "2", *LOAD, "--json",
                   "--set-env", "APP_STOP_MODE=ignore")
    report = _report(proc)
    assert report["outcome"] == "completed", proc.stderr[-3000:]
    assert report["requests"]["dropped"] == 0 and _check(report, "dropped") == "PASS", report["requests"]
    assert len(_events(report, "term")) == 2 and not report["faults"]
    assert [s["detail"]["exit_code"] for s in _events(report, "stop")] == [0, 0]

    # 3. servers that ignore SIGTERM are killed at the stop timeout; their replacements pass
    #    readiness while their real routes still answer 503
    proc = cli.run("roll", "--to", "v2", "--strategy", "double-half", "--no-load", "--json",
                   "--set-env", "APP_READY_EARLY_S=600")
    report = _report(proc)
    assert report["outcome"] == "completed", proc.stderr[-3000:]
    stops = _events(report, "stop")
    assert [s["detail"]["exit_code"] for s in stops] == [SIGKILL_EXIT, SIGKILL_EXIT]
    assert all(s["detail"]["stop_s"] >= Timing().stop_grace_s for s in stops)  # not one second sooner
    new = cli.json("status", "--json")["instances"]
    assert len(new) == 2 and {i["version"] for i in new} == {"v2"}
    for inst in new:
        assert _status(inst["address"], "/healthz") == 200
        assert _status(inst["address"], "/api/items/1") == 503
