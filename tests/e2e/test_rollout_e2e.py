"""Rollouts under live Locust traffic through real NGINX, against the real engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import docker
import pytest

from tests.e2e.conftest import REPO, Cli, assert_passes

pytestmark = pytest.mark.e2e

SIZE = "4"
LOAD = ("--users", "10", "--warmup", "2", "--cooldown", "2")


def fleet(cli: Cli) -> list[dict[str, Any]]:
    return cli.json("status", "--json")["instances"]


def assert_fleet_on(cli: Cli, version: str, size: int = int(SIZE)) -> None:
    instances = fleet(cli)
    assert len(instances) == size, instances
    assert sorted(i["slot"] for i in instances) == list(range(1, size + 1))
    assert all(i["version"] == version and i["attached"] and i["state"] == "running" for i in instances), instances
    answered = {cli.get("/api/items/1")[1]["X-App-Version"] for _ in range(8)}
    assert answered == {version}


def assert_clean(report: dict[str, Any]) -> None:
    req = report["requests"]
    assert req["total"] > 50, req  # the load really ran through the rollout
    assert req["dropped"] == 0, (req, report["stall_s"])
    assert report["phases"]["rollout"]["requests"] > 0
    # every request the load sent is a row, and every load request NGINX answered is one of them
    assert (report["rows_lost"], report["unrecorded"], report["load_generator"]["sent"]) == (0, 0, req["total"])
    judged = {c["name"]: c["status"] for c in report["verdict"]["checks"]}
    assert (judged["rows_lost"], judged["unrecorded"], judged["not_found"]) == ("PASS", "PASS", "PASS")


@pytest.fixture(scope="module")
def shared(module_cli: Cli) -> Cli:
    """One fleet of SIZE for the rolls below: each starts from it consistent on one version, rolls to
    the other and leaves it consistent, so only one `up` is paid. Its environment (APP_LATENCY_MS=1,
    1 ms per answer) is what a roll must give every new server."""
    module_cli.run("up", "--size", SIZE, "--port", str(module_cli.port), "--env", "APP_LATENCY_MS=1", check=True)
    return module_cli


def versions(cli: Cli) -> tuple[str, str]:
    """The version the whole fleet runs (checked consistent), and the other one."""
    current = fleet(cli)[0]["version"]
    assert_fleet_on(cli, current)
    return current, "v2" if current == "v1" else "v1"


MIXED_NEVER = ("--mixed-check", "exit 3")  # blue-green never serves both versions: the check is never run


@pytest.mark.parametrize("args, peak", [
    (("--strategy", "one-at-a-time"), 4),
    (("--strategy", "rolling", "--batch", "2"), 4),
    (("--strategy", "surge", "--batch", "2"), 6),
    (("--strategy", "double-half"), 8),
    (("--strategy", "one-at-a-time", "--mode", "in-place"), 4),
    (("--strategy", "blue-green", *MIXED_NEVER), 8),
], ids=["one-at-a-time", "rolling-2", "surge-2", "double-half", "in-place", "blue-green"])
def test_graceful_strategies_drop_nothing(shared: Cli, args: tuple[str, ...], peak: int) -> None:
    source, target = versions(shared)
    report = assert_passes(shared.run("roll", "--to", target, *args, *LOAD, "--json"))
    assert report["outcome"] == "completed"
    assert report["to_version"] == target and report["from_version"] == source
    assert_clean(report)
    assert report["requests"]["by_version"]["v2"] > 0 and report["requests"]["by_version"]["v1"] > 0
    assert report["peak_instances"] == peak
    phases = [s["phase"] for s in report["steps"]]
    assert phases[0] == "load-start" and "rollout-start" in phases and "rollout-end" in phases
    assert_fleet_on(shared, target)
    if "--mixed-check" in args:  # said, and not a failure
        [record] = report["mixed_checks"]
        assert record["status"] == "not_run" and "never had both versions attached" in record["reason"]
        check = next(c for c in report["verdict"]["checks"] if c["name"] == "mixed_check_1")
        assert check["skipped"] is True


def test_naive_drops_requests(cli: Cli) -> None:
    """Killing servers that are still attached must show up as dropped: the measurement can see a drop.
    The drops alone fail it: `--max-error-ratio 1` so they never roll it back, and `--max-p99-ms 60000` as
    a killed server's requests may or may not wait long enough (1 s seen) to fail the p99 check."""
    cli.run("up", "--size", SIZE, "--port", str(cli.port), "--env", "APP_LATENCY_MS=50", check=True)
    report = assert_passes(cli.run("roll", "--to", "v2", "--strategy", "naive", "--users", "20", "--warmup", "2",
                                   "--cooldown", "2", "--set-env", "APP_LATENCY_MS=50", "--max-error-ratio", "1",
                                   "--max-p99-ms", "60000", "--json"), expected=frozenset({"dropped"}))
    assert report["outcome"] == "completed"
    assert report["requests"]["dropped"] > 0
    assert report["phases"]["rollout"]["dropped"] > 0


@pytest.mark.parametrize("mode", ["replace", "in-place"])
def test_boot_failure_rolls_back_without_drops(shared: Cli, mode: str) -> None:
    source, target = versions(shared)
    report = assert_passes(shared.run("roll", "--to", target, "--mode", mode, "--set-env", "APP_BOOT_FAIL=1",
                                      "--ready-timeout", "10", *LOAD, "--json"), expected=frozenset({"outcome"}))
    assert report["outcome"] == "rolled_back"
    phases = [s["phase"] for s in report["steps"]]
    assert "failed" in phases and "rollback-end" in phases
    assert_clean(report)
    assert report["requests"]["by_version"].get(target, 0) == 0
    assert_fleet_on(shared, source)


def env_of(client: docker.DockerClient, name: str) -> dict[str, str]:
    pairs = client.containers.get(name).attrs["Config"]["Env"]
    return dict(p.split("=", 1) for p in pairs)


def test_rollback_after_a_completed_roll(shared: Cli, client: docker.DockerClient) -> None:
    cli = shared
    source, target = versions(cli)
    first = cli.json("roll", "--to", target, "--strategy", "rolling", "--batch", "2", "--no-load",
                     "--set-env", "APP_MARK=new", "--json")
    assert first["outcome"] == "completed"
    new_env = env_of(client, fleet(cli)[0]["name"])
    assert new_env["APP_LATENCY_MS"] == "1" and new_env["APP_MARK"] == "new"  # fleet env kept, new env added
    back = assert_passes(cli.run("rollback", *LOAD, "--json"))
    assert back["outcome"] == "completed"
    assert back["from_version"] == target and back["to_version"] == source
    assert_clean(back)
    assert_fleet_on(cli, source)
    old_env = env_of(client, fleet(cli)[0]["name"])
    assert old_env["APP_LATENCY_MS"] == "1" and "APP_MARK" not in old_env
    again = cli.run("rollback", "--no-load")
    assert again.returncode == 2 and "nothing to roll back" in again.stderr


def test_ctrl_c_leaves_a_consistent_serving_fleet(shared: Cli) -> None:
    cli = shared
    source, target = versions(cli)
    cmd = [sys.executable, "-m", "sandbox", "roll", "--to", target, "--project", cli.project, "--users", "5",
           "--warmup", "1", "--cooldown", "1", "--json"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    # wait until the first server has been replaced and attached, then interrupt
    deadline = time.monotonic() + 120
    seen = ""
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if " attach " in line or line.split("]")[-1].strip().startswith("attach"):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, seen + err
    report = json.loads(out)
    assert report["outcome"] == "interrupted"
    assert "resumes" in err and "rollback" in err
    instances = fleet(cli)
    attached = [i for i in instances if i["attached"]]
    assert len(attached) >= int(SIZE) - 1  # one-at-a-time: at most one server out
    assert {i["version"] for i in attached} == {source, target}  # stopped part-way
    for _ in range(20):
        assert cli.get("/api/items/2")[0] == 200
    # `roll` again resumes from the labels and finishes
    resumed = cli.json("roll", "--to", target, "--no-load", "--json")
    assert resumed["outcome"] == "completed"
    assert_fleet_on(cli, target)


def test_error_ratio_above_the_limit_rolls_back(shared: Cli) -> None:
    source, target = versions(shared)
    report = assert_passes(shared.run("roll", "--to", target, "--set-env", "APP_ERROR_RATIO=0.6",
                                      "--max-error-ratio", "0.05", *LOAD, "--json"),
                           expected=frozenset({"outcome", "dropped"}))
    assert report["outcome"] == "rolled_back"
    failed = [s for s in report["steps"] if s["phase"] == "failed"]
    assert "error ratio" in str(failed[0].get("detail"))
    assert report["requests"]["dropped"] > 0  # the 500s the new version answered are what the users saw
    assert_fleet_on(shared, source)


def test_a_container_that_vanished_is_taken_out_before_rolling(shared: Cli, client: docker.DockerClient) -> None:
    """A crash left the config naming a container that is gone: roll repairs it first."""
    cli = shared
    _, target = versions(cli)
    victim = fleet(cli)[1]["name"]
    client.containers.get(victim).remove(force=True, v=True)
    assert len(cli.json("status", "--json")["lb"]["upstreams"]) == int(SIZE)  # stale entry still configured
    proc = cli.run("roll", "--to", target, "--users", "5", "--warmup", "1", "--cooldown", "1", "--json")
    report = assert_passes(proc)
    assert f"took {victim} out of the load balancer" in proc.stderr
    assert report["outcome"] == "completed" and report["requests"]["dropped"] == 0
    assert_fleet_on(cli, target)
