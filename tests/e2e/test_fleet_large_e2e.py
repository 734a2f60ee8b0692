"""Large fleets: 20 servers rolled under light load drop nothing; reload mode holds 50 servers
(its config's state spans several comment lines, each under NGINX's 4 KiB line limit)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Cli

pytestmark = pytest.mark.e2e


def test_twenty_servers_roll_with_nothing_dropped(cli: Cli) -> None:
    cli.run("up", "--size", "20", "--port", str(cli.port), check=True)
    report = cli.json("roll", "--to", "v2", "--strategy", "rolling", "--batch", "5", "--users", "5",
                      "--think-ms", "100-200", "--json", expect=None)
    assert report["outcome"] == "completed", report["verdict"]
    assert report["requests"]["total"] > 0 and report["requests"]["dropped"] == 0, report["requests"]
    assert report["unavoidable_s"] > 0 and report["overhead_ratio"] >= 1.0
    data = cli.json("status", "--json")
    assert len(data["instances"]) == 20 and {s["version"] for s in data["instances"]} == {"v2"}


def test_reload_mode_holds_fifty_servers(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    # 50 Python apps booting at once on 2 shared cores: some took over 30 s (the default bound)
    monkeypatch.setenv("SANDBOX_READY_TIMEOUT", "180")
    cli.run("up", "--size", "50", "--port", str(cli.port), "--lb-apply", "reload", check=True)
    data = cli.json("status", "--json")  # read back from the live config's state lines
    assert data["lb"]["lb_apply"] == "reload" and len(data["lb"]["upstreams"]) == 50
    assert sum(1 for s in data["instances"] if s["attached"]) == 50
    status, _, body = cli.get("/")
    assert status == 200 and body
