"""Large fleets: 20 servers rolled under light load drop nothing; in reload mode a fleet state too
long for one line of NGINX's config (4 KiB) spans several comment lines and is read back whole."""

from __future__ import annotations

import docker
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


def test_reload_mode_keeps_a_state_longer_than_one_config_line(cli: Cli, client: docker.DockerClient) -> None:
    # The state the config carries grows with the servers and with `up --env`: 40 variables of 200
    # characters make it about 9 KiB on 3 servers, as 50 servers or more would (once 50 booting Python
    # apps on 2 cores, over a minute, proved no more than this).
    env = {f"APP_PAD_{i:02}": "x" * 200 for i in range(40)}
    cli.run("up", "--size", "3", "--port", str(cli.port), "--lb-apply", "reload",
            *(f"--env={k}={v}" for k, v in env.items()), check=True)
    data = cli.json("status", "--json")  # read back from the live config's state lines
    assert data["lb"]["lb_apply"] == "reload" and len(data["lb"]["upstreams"]) == 3
    assert sum(1 for s in data["instances"] if s["attached"]) == 3
    status, _, body = cli.get("/")
    assert status == 200 and body
    # a roll reads the fleet's environment back from those lines and gives it whole to each new server
    assert cli.json("roll", "--to", "v2", "--no-load", "--json")["outcome"] == "completed"
    instances = cli.json("status", "--json")["instances"]
    assert {i["version"] for i in instances} == {"v2"} and all(i["attached"] for i in instances)
    pairs = client.containers.get(instances[0]["name"]).attrs["Config"]["Env"]
    assert dict(p.split("=", 1) for p in pairs).items() >= env.items()
