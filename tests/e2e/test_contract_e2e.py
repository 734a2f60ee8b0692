"""Expand/contract in one roll, and rollback safety rehearsed under load (issue 21's table, 3 servers):

- ``--migrate 'python3 -m migrate expand' --contract 'python3 -m migrate contract'``: v1 answers no
  error while the fleet is mixed, 0 dropped; the old version served against the schema after the
  rollout works (rollback safe), after the contract it does not (shown, not judged: PASS);
- ``--migrate 'python3 -m migrate breaking'``: v1 answers errors (409 schema mismatch, answers, not
  drops), the rollback rehearsal names the missing column; with ``--require-rollback-safe`` that fails.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import docker
import pytest

from sandbox.fleet import labels as L
from sandbox.fleet.images import ensure_db_image
from tests.e2e.conftest import Cli, assert_passes

pytestmark = pytest.mark.e2e

# the machine is shared: latency is not what these tests judge (the contract's lock may hold a request)
LOAD = ("--users", "10", "--warmup", "3", "--cooldown", "2", "--slow-ms", "30000", "--max-p99-ms", "60000",
        "--max-stall-s", "5")
EXPAND, CONTRACT, BREAKING = ("python3 -m migrate expand", "python3 -m migrate contract",
                              "python3 -m migrate breaking")


@pytest.fixture(scope="module", autouse=True)
def db_image(client: docker.DockerClient) -> str:
    """The PostgreSQL image, built once when missing (cached by its inputs, as the others)."""
    return ensure_db_image(client)


def _up(cli: Cli, size: int = 3) -> None:
    cli.run("up", "--size", str(size), "--port", str(cli.port), "--service", "postgres", check=True)


def _rehearsals(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["after"]: r for r in report["rollback_rehearsals"]}


def _check(report: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in report["verdict"]["checks"] if c["name"] == name)
    return found


def test_expand_then_contract_keeps_v1_working_while_mixed_and_the_rollback_breaks_only_after_the_contract(
        cli: Cli, client: docker.DockerClient, tmp_path: Path) -> None:
    _up(cli)
    junit = tmp_path / "junit.xml"
    proc = cli.run("roll", "--to", "v2", "--migrate", EXPAND, "--contract", CONTRACT, *LOAD, "--json",
                   "--junit", str(junit), "--report", str(tmp_path / "r"))
    report = assert_passes(proc)  # an unsafe rollback after the contract is shown, not judged
    assert report["outcome"] == "completed" and report["requests"]["dropped"] == 0
    after = report["migration"]["by_version_after"]
    assert after["v1"]["answers"] > 0 and after["v1"]["errors"] == 0, after  # v1 served the expanded schema
    assert report["contract"]["status"] == "passed" and report["contract"]["at"] == "after", report["contract"]
    rehearsed = _rehearsals(report)
    assert list(rehearsed) == ["rollout", "contract"]
    before, contracted = rehearsed["rollout"], rehearsed["contract"]
    assert (before["version"], before["status"], before["errors"], before["rollback_safe"]) == ("v1", "ran", 0, "yes")
    assert before["requests"] > 0, before
    assert (contracted["status"], contracted["rollback_safe"]) == ("ran", "no"), contracted
    assert contracted["errors"] > 0 and "item_name" in contracted["first_error"], contracted  # names the column
    assert _check(report, "rollback_safe_after_rollout")["status"] == "PASS"
    assert _check(report, "rollback_safe_after_contract")["status"] == "SKIP"
    assert _check(report, "contract")["status"] == "PASS"
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert cases["rollback_safe_after_rollout"].find("failure") is None
    assert cases["rollback_safe_after_contract"].find("skipped") is not None
    assert "migrate contract: done" in (cases["contract"].findtext("system-out") or "")
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "## Contract step" in markdown and "## Rollback safety" in markdown
    assert f"| contract | v1 | {contracted['requests']} | {contracted['errors']} | no |" in markdown
    assert "rollback safe: no" in proc.stderr  # the summary, beside the JSON
    # the rehearsals' containers are gone; the fleet serves v2 against the contracted schema
    assert client.containers.list(all=True, filters=L.project_filter(cli.project, L.ROLE_MIGRATE)) == []
    status = cli.json("status", "--json")
    assert {s["version"] for s in status["instances"]} == {"v2"}, status


def test_breaking_breaks_v1_at_once_and_the_rollback_too(cli: Cli, tmp_path: Path) -> None:
    _up(cli)
    proc = cli.run("roll", "--to", "v2", "--migrate", BREAKING, "--require-rollback-safe", *LOAD, "--json",
                   "--report", str(tmp_path / "r"))
    report = assert_passes(proc, expected=frozenset({"migration_errors", "rollback_safe_after_rollout"}))
    assert report["requests"]["dropped"] == 0  # the errors are answers, not drops
    after = report["migration"]["by_version_after"]
    assert after["v1"]["errors"] > 0 and after["v2"]["errors"] == 0, after
    [rehearsed] = report["rollback_rehearsals"]
    assert (rehearsed["after"], rehearsed["rollback_safe"]) == ("rollout", "no"), rehearsed
    assert rehearsed["errors"] > 0 and "schema mismatch" in rehearsed["first_error"], rehearsed
    assert "item_name" in rehearsed["first_error"], rehearsed
    judged = _check(report, "rollback_safe_after_rollout")
    assert (judged["status"], judged["value"]) == ("FAIL", rehearsed["errors"])
    assert "contract" not in report
    assert json.loads((tmp_path / "r" / "report.json").read_text())["rollback_rehearsals"] == [rehearsed]


def test_compare_migrate_shows_the_old_versions_errors_and_rollback_safety_per_strategy(
        cli: Cli, tmp_path: Path) -> None:
    proc = cli.run("compare", "--size", "3", "--strategies", "one-at-a-time,blue-green", "--service", "postgres",
                   "--migrate", BREAKING, *LOAD, "--report", str(tmp_path / "cmp"), timeout=1200)
    assert proc.returncode == 1, (proc.stdout, proc.stderr[-3000:])  # breaking fails migration_errors in both
    rows = {r["strategy"]: r for r in json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]}
    for strategy, row in rows.items():
        assert row["dropped"] == 0, (strategy, row)  # errors are answers, not drops
        assert row["old_version_errors"] > 0 and row["rollback_safe"] == "no", (strategy, row)
        assert row["failed_checks"] == ["migration_errors"], (strategy, row)
    # blue-green switches at once (no mixed window to speak of): its old-version errors are the old
    # fleet's, against the new schema, while the new fleet boots
    assert rows["blue-green"]["mixed_window_s"] < rows["one-at-a-time"]["mixed_window_s"], rows
    header = proc.stdout.splitlines()[0]
    assert "old-version errors" in header and "rollback safe" in header, proc.stdout
