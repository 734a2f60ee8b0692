"""Faults during a rollout: each one ends with a consistent fleet, a named fault, nothing leaked.

The `cli` fixture removes the project and asserts nothing labelled remains (no leak).
Scenarios 7 (5xx above --max-error-ratio) and 8 (never ready within --ready-timeout) are
``test_error_ratio_above_the_limit_rolls_back`` and ``test_boot_failure_rolls_back_without_drops``
in test_rollout_e2e.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from sandbox.fleet import labels as L
from tests.e2e.conftest import REPO, Cli, wait_for_line

pytestmark = pytest.mark.e2e

SIZE = 3
LOAD = ("--users", "10", "--warmup", "1", "--cooldown", "1")


def assert_consistent(cli: Cli, client: docker.DockerClient, version: str, size: int = SIZE) -> None:
    """Every slot runs one container on ``version``, attached exactly once, and the load
    balancer's attached set is exactly the running containers Docker's labels name."""
    status = cli.json("status", "--json")
    instances = status["instances"]
    assert sorted(i["slot"] for i in instances) == list(range(1, size + 1)), instances
    assert all(i["state"] == "running" and i["attached"] and i["version"] == version for i in instances), instances
    upstreams = status["lb"]["upstreams"]
    assert len(upstreams) == len(set(upstreams)) == size, upstreams
    labelled = client.containers.list(filters=L.project_filter(cli.project, L.ROLE_APP))
    assert {c.labels[L.LABEL_VERSION] for c in labelled} == {version}
    assert sorted(upstreams) == sorted(i["address"] for i in instances)
    answered = {cli.get("/api/items/1")[1]["X-App-Version"] for _ in range(6)}
    assert answered == {version}


_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_controller_left(cli: Cli) -> Iterator[None]:
    """A test that fails half-way leaves no controller running and no pipe open (ended before
    ``cli`` removes the project: a running controller holds its lock)."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def start_roll(cli: Cli, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "sandbox", "roll", "--to", "v2", "--project", cli.project, *args, "--json"]
    _STARTED.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}))
    return _STARTED[-1]


def test_controller_sigkilled_then_roll_resumes(cli: Cli, client: docker.DockerClient) -> None:
    # no load in the killed run: a SIGKILLed controller cannot stop its Locust (own session)
    cli.run("up", "--size", str(SIZE), "--port", str(cli.port), check=True)
    proc = start_roll(cli, "--no-load")
    wait_for_line(proc, " attach")
    proc.kill()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    for _ in range(10):
        assert cli.get("/api/items/2")[0] == 200  # still serving, part-way
    resumed = cli.json("roll", "--to", "v2", *LOAD, "--json", expect=None)
    assert resumed["outcome"] == "completed", resumed
    assert resumed["requests"]["dropped"] == 0
    assert_consistent(cli, client, "v2")


@pytest.mark.parametrize(("max_error_ratio", "outcome"), [("1", "completed"), ("0", "rolled_back")])
def test_old_server_killed_mid_rollout(cli: Cli, client: docker.DockerClient, max_error_ratio: str,
                                       outcome: str) -> None:
    """The kill's drops stop the roll (--max-error-ratio 0: rolled back, the dead server replaced by
    a fresh one) or not (1: completed); either way the same command leaves every slot attached on
    one version."""
    cli.run("up", "--size", str(SIZE), "--port", str(cli.port), check=True)
    # new servers boot in 3 s: an old one is still serving when the test looks (the controller is fast)
    proc = start_roll(cli, *LOAD, "--max-error-ratio", max_error_ratio, "--set-env", "APP_STARTUP_DELAY=3")
    wait_for_line(proc, " attach")
    old = [i for i in cli.json("status", "--json")["instances"] if i["version"] == "v1" and i["attached"]]
    assert old, "no old server left to kill"
    victim = old[-1]["name"]
    client.containers.get(victim).kill()
    out, err = proc.communicate(timeout=300)
    report = json.loads(out)
    assert report["outcome"] == outcome, (report["outcome"], err)
    assert_consistent(cli, client, "v2" if outcome == "completed" else "v1")  # right after, no repair
    died = [f for f in report["faults"] if f["fault"] == "died"]
    assert [f["instance"] for f in died] == [victim], (report["faults"], err)
    # what the kill cost is counted against it: every request lost to it was seen dropped by a user
    assert 0 < died[0]["lost_requests"] <= report["requests"]["dropped"], (died, report["requests"])
    assert f"{victim} died while attached" in err
    failed = {c["name"] for c in report["verdict"]["checks"] if not c["pass"]}
    assert "dropped" in failed and not report["verdict"]["pass"], report["verdict"]
    assert proc.returncode == 1, err


def test_load_balancer_killed_mid_rollout(cli: Cli, client: docker.DockerClient) -> None:
    """SIGKILL to the LB container mid-roll (4 servers, default load): the same roll says the load
    balancer exited, starts it again with the fleet's state, and completes or rolls back; the
    report gives the outage window and the requests it cost, and the fleet serves right after."""
    size = 4
    cli.run("up", "--size", str(size), "--port", str(cli.port), check=True)
    proc = start_roll(cli, "--warmup", "2", "--cooldown", "1")
    wait_for_line(proc, " attach")
    client.containers.get(f"{cli.project}-lb").kill()
    out, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err
    report = json.loads(out)
    assert "the load balancer exited" in err, err
    assert report["outcome"] in ("completed", "rolled_back"), (report["outcome"], err)
    status = cli.json("status", "--json")
    assert status["lb"]["state"] == "running", status["lb"]
    assert_consistent(cli, client, "v2" if report["outcome"] == "completed" else "v1", size=size)
    (outage,) = [f for f in report["faults"] if f["fault"] == "lb_exited"]
    assert 0 < outage["outage_s"] < 60 and outage["lost_requests"] > 0, outage
    assert outage["lost_requests"] <= report["requests"]["dropped"], (outage, report["requests"])
    failed = {c["name"] for c in report["verdict"]["checks"] if not c["pass"]}
    assert "dropped" in failed and not report["verdict"]["pass"], report["verdict"]
    assert proc.returncode == 1, err
    assert client.containers.get(f"{cli.project}-lb").attrs["HostConfig"]["RestartPolicy"]["Name"] == "on-failure"


def test_a_second_command_on_a_busy_project_exits_2_naming_the_holder(cli: Cli, client: docker.DockerClient) -> None:
    cli.run("up", "--size", str(SIZE), "--port", str(cli.port), check=True)
    proc = start_roll(cli, "--no-load", "--set-env", "APP_STARTUP_DELAY=2")
    wait_for_line(proc, " attach")
    for command in ("down", "rollback", "up"):
        busy = cli.run(command)
        assert busy.returncode == 2, (command, busy.stderr)
        assert f"is busy: `sandbox roll --to v2 --project {cli.project}" in busy.stderr, busy.stderr
        assert f"(roll, pid {proc.pid}) since" in busy.stderr, busy.stderr
    out, err = proc.communicate(timeout=300)
    assert json.loads(out)["outcome"] == "completed", err
    assert_consistent(cli, client, "v2")  # the refused `down` touched nothing


def test_nginx_rejects_the_rendered_config(cli: Cli, client: docker.DockerClient, tmp_path: Path) -> None:
    cli.run("up", "--size", str(SIZE), "--port", str(cli.port), "--lb-apply", "reload", check=True)
    template = (REPO / "lb" / "nginx.conf.j2").read_text()
    broken = tmp_path / "broken.conf.j2"
    broken.write_text(template + "\nno_such_directive on;\n")
    before = cli.json("status", "--json")["lb"]["upstreams"]
    proc = start_roll(cli, *LOAD, env={"SANDBOX_LB_TEMPLATE": str(broken)})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, err
    assert "nginx -t rejected the new config" in err and "no_such_directive" in err, err
    assert "Traceback" not in err
    assert cli.json("status", "--json")["lb"]["upstreams"] == before  # nothing was reloaded
    for _ in range(10):
        assert cli.get("/api/items/3")[0] == 200
    assert_consistent(cli, client, "v1")


def test_new_server_dies_after_ready_before_attach(cli: Cli, client: docker.DockerClient) -> None:
    """The controller is held (SIGSTOP) as soon as it says a v2 server is ready, the server is
    killed, the controller goes on (SIGCONT): it must not attach it, and rolls back."""
    cli.run("up", "--size", str(SIZE), "--port", str(cli.port), check=True)
    proc = start_roll(cli, *LOAD)
    seen = wait_for_line(proc, " ready ")
    proc.send_signal(signal.SIGSTOP)
    try:
        ready_line = seen.splitlines()[-1]
        victim = next(w for w in ready_line.split() if w.startswith(f"{cli.project}-app-"))
        client.containers.get(victim).kill()
    finally:
        proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    report = json.loads(out)
    assert f"attach         {victim}" not in err, err  # never given to the load balancer
    assert report["outcome"] == "rolled_back", (report["outcome"], err)
    failed = [s for s in report["steps"] if s["phase"] == "failed"]
    assert "stopped after it was ready, before it was attached" in str(failed[0].get("detail")), failed
    assert victim in str(failed[0].get("detail"))
    assert_consistent(cli, client, "v1")


PROXY = """
import os, socket, sys, threading
path, target = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_UNIX); srv.bind(path); srv.listen(64)
def pipe(a, b):
    try:
        while (data := a.recv(65536)):
            b.sendall(data)
    except OSError:
        pass
    for s in (a, b):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
while True:
    c, _ = srv.accept()
    u = socket.socket(socket.AF_UNIX); u.connect(target)
    threading.Thread(target=pipe, args=(c, u), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c), daemon=True).start()
"""


def test_docker_engine_unreachable_mid_rollout(cli: Cli, client: docker.DockerClient, tmp_path: Path) -> None:
    """The shared engine may not be restarted here: the controller reaches it through a socket
    proxy this test starts, then SIGKILLs mid-rollout (every connection cut, none accepted)."""
    cli.run("up", "--size", str(SIZE), "--port", str(cli.port), check=True)
    sock = tmp_path / "docker.sock"
    proxy = subprocess.Popen([sys.executable, "-c", PROXY, str(sock), "/var/run/docker.sock"])
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc = start_roll(cli, *LOAD, env={"DOCKER_HOST": f"unix://{sock}"})
        wait_for_line(proc, " attach")
    finally:
        proxy.kill()
        proxy.wait(timeout=10)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, err
    assert "Traceback" not in err, err
    error_lines = [ln for ln in err.splitlines() if ln.startswith("sandbox: error:")]
    assert len(error_lines) == 1 and "Docker engine stopped answering" in error_lines[0], err
    resumed = cli.json("roll", "--to", "v2", *LOAD, "--json", expect=None)
    assert resumed["outcome"] == "completed", resumed
    assert_consistent(cli, client, "v2")
