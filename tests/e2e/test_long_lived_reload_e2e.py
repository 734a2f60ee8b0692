"""Long-lived connections through a reload-mode roll of 3: each detach is a graceful NGINX reload,
whose old workers keep their open connections (up to ``worker_shutdown_timeout``), so nothing is
cut by a reload; each connection ends when its server's stop closes it properly. The drain does
not count long-lived connections in this mode (``long_lived`` is null)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import Cli

pytestmark = pytest.mark.e2e


def test_reloads_cut_no_long_lived_connection(cli: Cli) -> None:
    cli.run("up", "--size", "3", "--port", str(cli.port), "--lb-apply", "reload", check=True)
    proc = cli.run("roll", "--to", "v2", "--users", "4", "--ws-users", "6", "--sse-users", "4",
                   "--warmup", "3", "--cooldown", "3", "--max-error-ratio", "1", "--json")
    report: dict[str, Any] = cli_report(proc.stdout, proc.stderr)
    assert report["lb_apply"] == "reload" and report["outcome"] == "completed", report.get("outcome")
    ll = report["long_lived"]
    assert ll["users"] == 10 and ll["abnormal_closes"] == 0 and ll["messages_lost"] == 0, ll
    # every user's first connection was on a v1 server; its stop said goodbye, and the user came back
    assert ll["closes"].get("ws 1001", 0) >= 6 and ll["closes"].get("sse end", 0) >= 4, ll
    assert ll["users_switched"] == 10, ll
    assert all(d["long_lived"] is None for d in report["drains"]), report["drains"]
    checks = {c["name"]: c["status"] for c in report["verdict"]["checks"]}
    assert checks["abnormal_closes"] == "PASS" and checks["messages_lost"] == "PASS", checks


def cli_report(stdout: str, stderr: str) -> dict[str, Any]:
    try:
        out: dict[str, Any] = json.loads(stdout)
    except ValueError as exc:
        raise AssertionError(f"not JSON:\n{stdout}\n{stderr[-3000:]}") from exc
    return out
