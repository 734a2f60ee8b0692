"""The drain of a server with long-lived connections, dynamic mode, a fleet of 3, v1 -> v2.

Each v1 server, once detached and its requests drained, still holds WebSockets and event streams
(they never finish by themselves). The drain sends its stop signal (the toy closes WebSockets with
1001 and ends its streams with ``retry:``), waits until the load balancer counts none open to it,
and only then is the container stopped and removed: each drain in the report says how many were
open and that 0 were left, with nothing timed out, cut or lost. Before that, a ``--ws-path`` the
app does not upgrade on is refused (one line, exit 2) with the fleet untouched.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import Cli, assert_passes

pytestmark = pytest.mark.e2e

LOAD = ("--users", "4", "--ws-users", "6", "--sse-users", "4", "--warmup", "3", "--cooldown", "3", "--json")


def test_a_drain_waits_until_the_lb_counts_no_long_lived_connection_open(cli: Cli) -> None:
    cli.run("up", "--size", "3", "--port", str(cli.port), check=True)
    # a --ws-path the app does not upgrade on: one line, exit 2, checked through the LB before any change
    bad = cli.run("roll", "--to", "v2", "--ws-users", "2", "--ws-path", "/api/items", "--warmup", "1")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "--ws-path /api/items: " in bad.stderr and "not 101" in bad.stderr, bad.stderr
    assert "v2" not in cli.run("status", check=True).stdout  # the fleet is still all v1

    proc = cli.run("roll", "--to", "v2", "--drain-timeout", "20", *LOAD)
    report = assert_passes(proc)
    assert report["lb_apply"] == "dynamic"
    drains: list[dict[str, Any]] = report["drains"]
    assert len(drains) == 3, drains
    # every drain counted the LB's long-lived connections; those that held some closed all of them
    assert all(d["long_lived"] is not None for d in drains), drains
    holding = [d for d in drains if d["long_lived"]]
    assert holding, drains  # 10 connections on 3 v1 servers: the drains met some
    for d in holding:
        assert d["long_lived_left"] == 0 and not d["timed_out"], d
        assert d["long_lived_close_s"] is not None and d["long_lived_close_s"] < 20, d
    # in the controller's steps, each such server's drain (the LB at 0) came before its stop, and
    # the stop found it already exited by itself (exit 0): the signal had gone out at the drain
    steps: list[dict[str, Any]] = report["steps"]
    for d in holding:
        (drain,) = [s for s in steps if s["phase"] == "drain" and s["instance"] == d["instance"]]
        (stop,) = [s for s in steps if s["phase"] == "stop" and s["instance"] == d["instance"]]
        assert drain["detail"]["long_lived_left"] == 0 and drain["t"] <= stop["t"], (drain, stop)
        assert stop["detail"]["exit_code"] == 0, stop
    # the first v1 server drained held its share of the 10 first connections; the users it closed
    # came back to the servers still attached, so the drains saw at least 10 in all
    assert sum(d["long_lived"] for d in drains) >= 10, drains
    ll = report["long_lived"]
    assert ll["abnormal_closes"] == 0 and ll["messages_lost"] == 0, ll
    assert ll["closes"].get("ws 1001", 0) + ll["closes"].get("sse end", 0) >= sum(d["long_lived"] for d in drains), ll
    assert report["requests"]["dropped"] == 0
