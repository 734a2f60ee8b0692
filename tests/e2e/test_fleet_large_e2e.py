"""A large fleet: 20 servers rolled under light load drop nothing. (Reload mode's state beyond one
4 KiB config line, once 50 servers here, is in test_lb_dynamic_e2e.)"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Cli, assert_passes

pytestmark = pytest.mark.e2e


def test_twenty_servers_roll_with_nothing_dropped(cli: Cli) -> None:
    cli.run("up", "--size", "20", "--port", str(cli.port), check=True)
    report = assert_passes(cli.run("roll", "--to", "v2", "--strategy", "rolling", "--batch", "5", "--users", "5",
                                   "--think-ms", "100-200", "--json"))
    assert report["outcome"] == "completed", report["verdict"]
    assert report["requests"]["total"] > 0 and report["requests"]["dropped"] == 0, report["requests"]
    assert report["unavoidable_s"] > 0 and report["overhead_ratio"] >= 1.0
    data = cli.json("status", "--json")
    assert len(data["instances"]) == 20 and {s["version"] for s in data["instances"]} == {"v2"}
