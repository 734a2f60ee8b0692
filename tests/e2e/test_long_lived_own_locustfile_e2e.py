"""Your own locustfile records long-lived connections too: a class that subclasses the sandbox's
``WebSocketUser`` (its own path and count, beside your HTTP users) writes the same rows, so the
report's long-lived figures and checks cover it with no --ws-users."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Cli, assert_passes

pytestmark = pytest.mark.e2e

LOCUSTFILE = '''
from locust import HttpUser, between, task

from sandbox.load.longlived_locustfile import WebSocketUser


class Shopper(HttpUser):
    wait_time = between(0.05, 0.2)

    @task
    def item(self):
        self.client.get("/api/items/1")


class Chat(WebSocketUser):
    fixed_count = 4
    path = "/ws"
'''


def test_a_websocket_user_of_your_own_locustfile_is_recorded(cli: Cli, tmp_path: Path) -> None:
    locustfile = tmp_path / "mine.py"
    locustfile.write_text(LOCUSTFILE)
    cli.run("up", "--size", "3", "--port", str(cli.port), check=True)
    report = assert_passes(cli.run("roll", "--to", "v2", "--locustfile", str(locustfile), "--users", "10",
                                   "--warmup", "3", "--cooldown", "3", "--json"))
    ll = report["long_lived"]
    assert report["long_lived_users"] == 0  # no --ws-users: the connections are your locustfile's
    assert ll["users"] == 4 and ll["abnormal_closes"] == 0 and ll["messages"] > 0, ll
    assert ll["closes"].get("ws 1001", 0) >= 4 and ll["reconnects"] >= 4, ll  # each v1 server said goodbye
    assert {c["name"] for c in report["verdict"]["checks"]} >= {"abnormal_closes", "messages_lost"}
    assert report["requests"]["dropped"] == 0 and report["requests"]["total"] > 0
