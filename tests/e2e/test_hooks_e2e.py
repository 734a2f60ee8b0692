"""``roll --hook EVENT=CMD`` against a real fleet, real NGINX and real Locust: hooks run on the host.

- a failing pre-rollout hook: exit 1, one line naming it, the fleet untouched (same containers, versions);
- a post-batch hook that fails at batch 2: the automatic rollback, every slot on v1, the hook's
  record in report.json and JUnit;
- hooks that succeed and write what they saw to a file: SANDBOX_URL answers, SANDBOX_BATCH counts the
  batches, DATABASE_URL reaches the project's PostgreSQL from the host (its port on 127.0.0.1 only);
- a PostgreSQL that is down at `roll`: one line, exit 1, nothing changed.
"""

from __future__ import annotations

import json
import shlex
import socket
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import pytest

from sandbox.fleet import labels as L
from sandbox.fleet.images import ensure_db_image
from tests.e2e.conftest import Cli

pytestmark = pytest.mark.e2e

LOAD = ("--users", "5", "--warmup", "2", "--cooldown", "1")
# what a loaded machine may fail by wall-clock alone; these tests judge the hooks, not the latency
TIMING = frozenset({"stall_s", "slow", "p99_ratio"})

# What a hook saw, one JSON line per run: its environment, what SANDBOX_URL answered, and what the
# server at DATABASE_URL answered to PostgreSQL's SSLRequest ('S' or 'N': a PostgreSQL server).
HOOK = r'''
import json, os, socket, struct, sys, urllib.request
from urllib.parse import urlsplit
seen = {k: os.environ.get(k) for k in ("SANDBOX_URL", "SANDBOX_PROJECT", "SANDBOX_VERSIONS", "SANDBOX_EVENT",
                                      "SANDBOX_BATCH", "DATABASE_URL")}
with urllib.request.urlopen(os.environ["SANDBOX_URL"] + "/", timeout=10) as resp:
    seen["url_status"] = resp.status
db = urlsplit(os.environ.get("DATABASE_URL", ""))
if db.port:
    with socket.create_connection((db.hostname, db.port), timeout=10) as sock:
        sock.sendall(struct.pack("!ii", 8, 80877103))
        seen["db_answer"] = sock.recv(1).decode()
with open(sys.argv[1], "a") as out:
    out.write(json.dumps(seen) + "\n")
'''


def _judged(proc: subprocess.CompletedProcess[str], *, failing: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The JSON report of a run whose verdict fails every check of ``failing``, and beside them at
    most the timing checks; exit code 1 when any failed, else 0."""
    report: dict[str, Any] = json.loads(proc.stdout)
    failed = {c["name"] for c in report["verdict"]["checks"] if not c["pass"]}
    assert failing <= failed <= failing | TIMING, (failed, proc.stderr[-3000:])
    assert proc.returncode == (1 if failed else 0), (proc.returncode, failed)
    return report


def _hook(path: Path, out: Path) -> str:
    """A hook command that appends what it saw to ``out`` (the script ``HOOK``, written to ``path``)."""
    path.write_text(HOOK)
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(path))} {shlex.quote(str(out))}"


def _fleet(cli: Cli) -> list[tuple[str, int, str, bool]]:
    """The app containers as `status` shows them: (name, slot, version, attached), by slot."""
    shown = cli.json("status", "--json")["instances"]
    return sorted(((i["name"], i["slot"], i["version"], i["attached"]) for i in shown), key=lambda i: i[1])


def _pg_answer(port: int) -> bytes:
    """What a server on 127.0.0.1:``port`` answers to PostgreSQL's SSLRequest (b'S' or b'N')."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(struct.pack("!ii", 8, 80877103))
        return sock.recv(1)


def test_a_failing_pre_rollout_hook_changes_nothing(cli: Cli) -> None:
    cli.run("up", "--size", "2", "--port", str(cli.port), check=True)
    before = _fleet(cli)
    proc = cli.run("roll", "--to", "v2", "--hook", "pre-rollout=echo backup refused; exit 1",
                   "--hook", "post-batch=true", *LOAD, "--json")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("sandbox: error:")]
    assert "pre-rollout hook 'echo backup refused; exit 1' failed (exit 1," in line and line.endswith(
        "the fleet was not changed: backup refused"), line
    assert _fleet(cli) == before and {v for _, _, v, _ in before} == {"v1"}


def test_a_post_batch_hook_failing_at_batch_2_rolls_back(cli: Cli, tmp_path: Path) -> None:
    cli.run("up", "--size", "3", "--port", str(cli.port), check=True)
    junit, out = tmp_path / "junit.xml", tmp_path / "rollback.jsonl"
    fail_at_2 = '[ "$SANDBOX_BATCH" != 2 ] || { echo "smoke test failed after batch $SANDBOX_BATCH"; exit 7; }'
    proc = cli.run("roll", "--to", "v2", "--hook", f"post-batch={fail_at_2}",
                   "--hook", f"on-rollback={_hook(tmp_path / 'hook.py', out)}",
                   *LOAD, "--json", "--junit", str(junit), "--report", str(tmp_path / "r"))
    report = _judged(proc, failing=frozenset({"outcome", "hook_post_batch_b2"}))
    assert report["outcome"] == "rolled_back"
    assert [(slot, version, attached) for _, slot, version, attached in _fleet(cli)] == [
        (1, "v1", True), (2, "v1", True), (3, "v1", True)]
    records = {r["name"]: r for r in report["mixed_checks"] if r.get("event")}
    failed = records["hook_post_batch_b2"]
    assert (failed["event"], failed["batch"], failed["status"], failed["exit_code"]) == ("post-batch", 2, "failed", 7)
    assert failed["stdout_tail"] == "smoke test failed after batch 2\n" and failed["duration_s"] >= 0
    assert records["hook_post_batch_b1"]["status"] == "passed" and "hook_post_batch_b3" not in records
    assert records["hook_on_rollback"]["status"] == "passed"
    [seen] = [json.loads(x) for x in out.read_text().splitlines()]  # on-rollback ran once, as the rollback began
    assert (seen["SANDBOX_EVENT"], seen["SANDBOX_VERSIONS"], seen["url_status"]) == ("on-rollback", "v1,v2", 200)
    on_disk = json.loads((tmp_path / "r" / "report.json").read_text())
    assert {r["name"] for r in on_disk["mixed_checks"]} >= {"hook_post_batch_b1", "hook_post_batch_b2"}
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    failure = cases["hook_post_batch_b2"].find("failure")
    assert failure is not None and "exit 7" in (failure.get("message") or "")
    assert cases["hook_post_batch_b2"].findtext("system-out") == "smoke test failed after batch 2\n"
    assert cases["hook_on_rollback"].find("failure") is None


@pytest.fixture(scope="module")
def db_image(client: docker.DockerClient) -> str:
    """The PostgreSQL image, built once when missing (cached by its inputs, as the others)."""
    return ensure_db_image(client)


def test_hooks_see_the_fleet_and_reach_its_database_from_the_host(
        cli: Cli, client: docker.DockerClient, db_image: str, tmp_path: Path) -> None:
    cli.run("up", "--size", "2", "--port", str(cli.port), "--service", "postgres", check=True)
    [db] = client.containers.list(filters=L.project_filter(cli.project, L.ROLE_POSTGRES))
    port = int(db.labels[L.LABEL_PORT])
    assert db.attrs["HostConfig"]["PortBindings"] == {"5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    out = tmp_path / "hooks.jsonl"
    hook = _hook(tmp_path / "hook.py", out)
    args = [a for event in ("pre-rollout", "post-batch", "post-rollout", "on-rollback")
            for a in ("--hook", f"{event}={hook}")]
    report = _judged(cli.run("roll", "--to", "v2", *args, *LOAD, "--json", "--report", str(tmp_path / "r")))
    assert report["outcome"] == "completed"
    seen: list[dict[str, Any]] = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(s["SANDBOX_EVENT"], s["SANDBOX_BATCH"]) for s in seen] == [
        ("pre-rollout", "0"), ("post-batch", "1"), ("post-batch", "2"), ("post-rollout", "0")]
    assert {(s["SANDBOX_URL"], s["SANDBOX_PROJECT"], s["SANDBOX_VERSIONS"]) for s in seen} == {
        (f"http://127.0.0.1:{cli.port}", cli.project, "v1,v2")}
    assert {s["url_status"] for s in seen} == {200}  # SANDBOX_URL answered every hook
    [url] = {s["DATABASE_URL"] for s in seen}
    parts = urlsplit(url)
    assert (parts.scheme, parts.username, parts.hostname, parts.port, parts.path) == (
        "postgresql", "app", "127.0.0.1", port, "/postgres")
    assert parts.password and len(parts.password) == 32
    assert {s["db_answer"] for s in seen} == {"N"}  # a PostgreSQL server answered, from the host
    assert _pg_answer(port) == b"N"
    records = [r for r in report["mixed_checks"] if r.get("event")]
    assert [(r["name"], r["status"]) for r in records] == [
        ("hook_pre_rollout", "passed"), ("hook_post_batch_b1", "passed"), ("hook_post_batch_b2", "passed"),
        ("hook_post_rollout", "passed"), ("hook_on_rollback", "not_run")]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Hooks" in md and "| hook_post_batch_b2 | post-batch | 2 | passed | 0 |" in md


def test_a_postgres_that_is_down_at_roll_changes_nothing(
        cli: Cli, client: docker.DockerClient, db_image: str) -> None:
    cli.run("up", "--size", "2", "--port", str(cli.port), "--service", "postgres", check=True)
    client.containers.get(f"{cli.project}-postgres").stop(timeout=10)
    before = _fleet(cli)
    proc = cli.run("roll", "--to", "v2", "--hook", "pre-rollout=true", *LOAD, "--json")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    [line] = [x for x in proc.stderr.splitlines() if x.strip()]  # nothing else was said: one line
    assert "the fleet's PostgreSQL server is down" in line and line.endswith("nothing was changed"), line
    assert f"docker start {cli.project}-postgres" in line
    assert _fleet(cli) == before and {v for _, _, v, _ in before} == {"v1"}
