"""Header and cookie routing during a paused, mixed rollout (`roll --pause-at-mixed`), against the
real engine, real NGINX (both apply modes) and real Locust: a request that names a version gets
that version every time, one that names a version with no server attached gets 503 naming it, the
LB's log attributes each routed answer to a server of the version asked, a mixed check reaches both
versions with curl, and `sandbox resume` completes with nothing dropped."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.e2e.conftest import Cli
from tests.e2e.test_steer_e2e import Roll, steer

pytestmark = pytest.mark.e2e

LOAD = ("--users", "10", "--warmup", "2", "--cooldown", "2")
PLANNED = "paused at the first moment both versions serve"
EACH = 50  # requests per version asked for, while paused
# the mixed check of the README ("Checks while both versions serve"): each version asked on purpose,
# by the header its environment names, must answer as itself
CURL_BOTH = '''
  for v in "$SANDBOX_FROM" "$SANDBOX_TO"; do
    curl -fsS -H "$SANDBOX_VERSION_HEADER: $v" "$SANDBOX_URL/" | grep -q "\\"version\\": \\"$v\\"" || exit 1
  done
  echo "$SANDBOX_FROM and $SANDBOX_TO each answered as itself"'''


def ask(cli: Cli, *, header: str | None = None, cookie: str | None = None,
        rid: str | None = None) -> tuple[int, str, str]:
    """One GET / through the LB: (status, the X-App-Version that answered or "", the body)."""
    headers = {**({"X-Sandbox-Version": header} if header is not None else {}),
               **({"Cookie": f"sandbox_version={cookie}"} if cookie is not None else {}),
               **({"X-Request-ID": rid} if rid is not None else {})}
    request = urllib.request.Request(f"http://127.0.0.1:{cli.port}/", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.headers.get("X-App-Version") or "", resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("X-App-Version") or "", exc.read().decode()


def lb_log(client: docker.DockerClient, project: str) -> dict[str, dict[str, Any]]:
    """The LB's access log by request id."""
    out = client.containers.get(f"{project}-lb").exec_run(["cat", "/var/log/nginx/access.json"]).output
    rows = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    return {r["rid"]: r for r in rows}


def addresses(status: dict[str, Any], version: str) -> set[str]:
    return {i["address"] for i in status["instances"] if i["attached"] and i["version"] == version}


def check_routing_while_paused(cli: Cli, client: docker.DockerClient) -> None:
    """Everything header and cookie routing promises, on the paused fleet (v1 and v2 attached)."""
    status = cli.json("status", "--json")
    assert status["steering"]["state"] == "paused", status["steering"]
    assert status["steering"]["paused_by"]["user"] == "the plan (--pause-at-mixed)"
    attached = Counter(i["version"] for i in status["instances"] if i["attached"])
    assert set(attached) == {"v1", "v2"}, status["instances"]  # paused mixed, every slot serving
    assert sum(attached.values()) == len({i["slot"] for i in status["instances"]})
    said = cli.run("status", check=True).stdout
    assert f"v1 and v2 attached: reach one with curl -H 'X-Sandbox-Version: v1' http://127.0.0.1:{cli.port}/" in said
    tag = secrets.token_hex(3)
    for version in ("v1", "v2"):
        answers = Counter(ask(cli, header=version, rid=f"route-{tag}-{version}-{n}")[:2] for n in range(EACH))
        assert answers == Counter({(200, version): EACH}), answers  # that version, every time
        by_cookie = Counter(ask(cli, cookie=version)[:2] for _ in range(20))
        assert by_cookie == Counter({(200, version): 20}), by_cookie
    assert ask(cli, header="v1", cookie="v2")[:2] == (200, "v1")  # the header wins over the cookie
    # a version with no server attached: 503 naming it, never a silent answer from another version
    code, answered, body = ask(cli, header="v9")
    assert (code, answered) == (503, "") and "no server of version v9 is attached" in body, (code, body)
    code, _, body = ask(cli, cookie="v9")
    assert code == 503 and "v9" in body
    code, _, body = ask(cli, header="bad/name")
    assert code == 503 and "(not a version name)" in body
    # without either, the balancer spreads over both versions as before
    plain = Counter(ask(cli)[:2] for _ in range(30))
    assert set(plain) == {(200, "v1"), (200, "v2")}, plain
    # the LB's log names the version asked and a server of that version answered each
    logged = lb_log(client, cli.project)
    for version in ("v1", "v2"):
        mine = [logged[f"route-{tag}-{version}-{n}"] for n in range(EACH)]
        assert all(r["route"] == version and r["status"] == 200 for r in mine)
        assert {r["upstream_addr"] for r in mine} <= addresses(status, version)


def roll_paused_then_resume(cli: Cli, client: docker.DockerClient, tmp_path: Path) -> dict[str, Any]:
    roll = Roll(cli, "--to", "v2", "--pause-at-mixed", *LOAD, "--mixed-check", CURL_BOTH,
                "--json", "--report", str(tmp_path))
    roll.wait_for(PLANNED)
    check_routing_while_paused(cli, client)
    answer, _ = steer(cli, "resume")
    assert answer["ok"] and answer["state"] == "running", answer
    code, report, err = roll.end()
    assert code == 0 and report["outcome"] == "completed", err[-3000:]
    assert report["requests"]["dropped"] == 0, report["requests"]
    assert report["exposure"]["requests_routed"] == 0  # the load named no version: nothing left out
    [check] = report["mixed_checks"]
    assert check["status"] == "passed", check
    assert check["stdout_tail"] == "v1 and v2 each answered as itself\n"
    paused = next(s for s in report["steps"] if s["phase"] == "paused")
    assert paused["detail"]["by"] == "the plan (--pause-at-mixed)" and paused["detail"]["reason"] == "plan"
    # after the rollout only v2 is attached: v1 asked by name is 503, v2 answers
    assert ask(cli, header="v1")[0] == 503
    assert ask(cli, header="v2")[:2] == (200, "v2")
    return report


def test_dynamic_lb_routes_by_header_and_cookie_while_paused_mixed(cli: Cli, client: docker.DockerClient,
                                                                   tmp_path: Path) -> None:
    cli.run("up", "--size", "3", "--port", str(cli.port), check=True)
    roll_paused_then_resume(cli, client, tmp_path)


def test_reload_lb_routes_by_header_and_cookie_while_paused_mixed(cli: Cli, client: docker.DockerClient,
                                                                  tmp_path: Path) -> None:
    # without client keep-alive: a reload closes no idle client connection (the classic reload drop)
    cli.run("up", "--size", "2", "--port", str(cli.port), "--lb-apply", "reload", "--no-client-keepalive", check=True)
    assert ask(cli, header="v2")[0] == 503  # before the roll: only v1 attached
    assert ask(cli, header="v1")[:2] == (200, "v1")
    roll_paused_then_resume(cli, client, tmp_path)


def test_pause_at_mixed_with_pause_after_batch_is_refused_before_anything_changes(cli: Cli) -> None:
    proc = cli.run("roll", "--to", "v2", "--pause-at-mixed", "--pause-after-batch", "1")
    assert proc.returncode == 2
    assert proc.stderr == ("sandbox: error: --pause-at-mixed: give --pause-at-mixed or --pause-after-batch, "
                           "not both: a rollout has one planned pause\n")
