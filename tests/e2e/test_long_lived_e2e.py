"""WebSockets and event streams through a rollout, behind the dynamic load balancer, on one fleet of 3.

1. v1 -> v2 with ``--ws-users`` and ``--sse-users``: each v1 server, detached and stopped, says
   goodbye (WebSocket close 1001, an event stream ending with ``retry:``); its clients reconnect
   through the load balancer to the servers still attached. Nothing is cut, no message is lost,
   the verdict passes.
2. v2 -> v1, the v2 servers started with the toy's ``APP_LONG_LIVED_CUT=1``: their stop aborts the
   connections instead (1006, cut streams), and the ``abnormal_closes`` check fails (exit 1).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import Cli, assert_passes

pytestmark = pytest.mark.e2e

LOAD = ("--users", "8", "--ws-users", "6", "--sse-users", "4", "--warmup", "3", "--cooldown", "3", "--json")


def _long_lived(report: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = report["long_lived"]
    return figures


def _check(report: dict[str, Any], name: str) -> dict[str, Any]:
    check: dict[str, Any] = next(c for c in report["verdict"]["checks"] if c["name"] == name)
    return check


def test_long_lived_connections_survive_a_graceful_roll_and_a_cut_one_fails(cli: Cli) -> None:
    cli.run("up", "--size", "3", "--port", str(cli.port), check=True)

    # 1. graceful: every stopped server closes its connections properly; clients come back elsewhere
    proc = cli.run("roll", "--to", "v2", "--set-env", "APP_LONG_LIVED_CUT=1", *LOAD)
    report = assert_passes(proc)
    ll = _long_lived(report)
    assert report["lb_apply"] == "dynamic" and report["long_lived_users"] == 10
    assert ll["users"] == 10 and ll["abnormal_closes"] == 0 and ll["messages_lost"] == 0, ll
    assert ll["messages_duplicated"] == 0 and ll["messages"] > 0, ll
    # the 3 v1 servers held every first connection: each was closed by its server and reopened
    assert ll["closes"].get("ws 1001", 0) >= 6 and ll["closes"].get("sse end", 0) >= 4, ll
    assert ll["reconnects"] >= 10 and ll["opened"] >= 20 and ll["reconnect_p99_ms"] is not None, ll
    assert ll["open_at_stop"] == 10, ll  # and every user held one when the load stopped
    assert {_check(report, n)["status"] for n in ("abnormal_closes", "messages_lost", "reconnect_p99_ms")} \
        == {"PASS"}

    # 2. the v2 servers cut their connections when stopped: abnormal closes, and the check fails
    proc = cli.run("roll", "--to", "v1", *LOAD)
    report = assert_passes(proc, expected=frozenset({"abnormal_closes"}))
    ll = _long_lived(report)
    cut = ll["closes"].get("ws 1006", 0) + ll["closes"].get("sse cut", 0)
    assert ll["abnormal_closes"] == cut and cut >= 10, ll
    assert _check(report, "abnormal_closes")["value"] == cut
    assert ll["messages_lost"] == 0 and report["requests"]["dropped"] == 0, json.dumps(ll)
