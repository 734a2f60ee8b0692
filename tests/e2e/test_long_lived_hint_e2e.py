"""The toy's reconnect hint as a setting, end to end: a fleet started with ``APP_RECONNECT_MS=300``
closes each WebSocket with 1001 and the reason ``retry=300``, and the ``--ws-users`` read it.

Only WebSocket users run, so the report's ``reconnect_hint_ms`` can only come from the close
frames' reasons (an event stream's ``retry:`` plays no part). Then the servers that cut their
connections give no hint at all.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import Cli, assert_passes

pytestmark = pytest.mark.e2e

LOAD = ("--users", "4", "--ws-users", "6", "--warmup", "3", "--cooldown", "3", "--json")


def test_websocket_users_read_the_hint_from_the_close_reason(cli: Cli) -> None:
    cli.run("up", "--size", "3", "--port", str(cli.port), "--env", "APP_RECONNECT_MS=300", check=True)

    report = assert_passes(cli.run("roll", "--to", "v2", "--set-env", "APP_LONG_LIVED_CUT=1", *LOAD))
    ll: dict[str, Any] = report["long_lived"]
    assert ll["users"] == 6 and ll["abnormal_closes"] == 0 and ll["closes"].get("ws 1001", 0) >= 6, ll
    assert not any(code.startswith("sse") for code in ll["closes"]), ll
    assert ll["reconnect_hint_ms"] == 300.0, ll  # parsed from "retry=300" by the WebSocket users
    assert ll["reconnects"] >= 6 and ll["reconnect_spread_ms"] is not None and ll["reconnect_spread_ms"] >= 0, ll

    # the v2 servers cut theirs: no close frame, so no hint reaches any client
    report = assert_passes(cli.run("roll", "--to", "v1", *LOAD), expected=frozenset({"abnormal_closes"}))
    ll = report["long_lived"]
    assert ll["closes"].get("ws 1006", 0) >= 6 and ll["closes"].get("ws 1001", 0) == 0, ll
    assert ll["reconnect_hint_ms"] is None, ll
