"""What the users saw: contracts, sticky routing, version attribution, reports on disk, demo."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cli, assert_passes

pytestmark = pytest.mark.e2e

LOAD = ("--users", "10", "--warmup", "2", "--cooldown", "2")


VIOLATIONS = frozenset({"contract_violations"})


def roll(cli: Cli, *args: str, expected: frozenset[str] = frozenset()) -> dict[str, Any]:
    return assert_passes(cli.run("roll", "--to", "v2", *LOAD, *args, "--json"), expected=expected)


def test_breaking_v2_violates_the_contract_compatible_does_not_and_sticky_lowers_downgrades(
        cli: Cli, tmp_path: Path) -> None:
    cli.run("up", "--size", "4", "--port", str(cli.port), check=True)
    breaking = roll(cli, "--v2-mode", "breaking", "--report", str(tmp_path / "breaking"), expected=VIOLATIONS)
    assert breaking["requests"]["dropped"] == 0
    assert breaking["exposure"]["contract_violations"] > 0
    # a breaking v2 fails its verdict, and the verdict says why
    violations = next(c for c in breaking["verdict"]["checks"] if c["name"] == "contract_violations")
    assert violations == {"name": "contract_violations", "kind": "at_most", "status": "FAIL", "pass": False,
                          "value": breaking["exposure"]["contract_violations"], "limit": 0}
    assert breaking["exposure"]["users_saw_both"] > 0 and breaking["exposure"]["mixed_window_s"] > 0
    # reports on disk: JSON, a real PNG chart, a Markdown page that embeds it
    files = {k: Path(v) for k, v in breaking["files"].items()}
    assert json.loads(files["json"].read_text())["outcome"] == "completed"
    assert "| contract_violations | FAIL |" in files["markdown"].read_text()
    png = files["chart"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "![chart](chart.png)" in files["markdown"].read_text()
    assert (tmp_path / "breaking" / "requests.jsonl").stat().st_size > 0
    # the version from the header and the one from NGINX's log agree
    attribution = breaking["attribution"]
    assert attribution["compared"] > 100 and attribution["agreement"] >= 0.99

    # back, then forward compatibly; going back, the breaking v2 still serves for a while: it fails too
    compatible = assert_passes(cli.run("roll", "--to", "v1", *LOAD, "--json"), expected=VIOLATIONS)
    assert compatible["requests"]["dropped"] == 0
    assert compatible["exposure"]["contract_violations"] > 0
    forward = roll(cli)
    assert forward["exposure"]["contract_violations"] == 0
    assert forward["exposure"]["downgrades"] > 0  # round-robin: users do go back to v1 mid-rollout

    # the same roll on a sticky fleet of the same size: each user stays on one server, so fewer go back
    cli.run("down", check=True)
    cli.run("up", "--size", "4", "--port", str(cli.port), "--sticky", check=True)
    sticky = roll(cli)
    assert sticky["requests"]["dropped"] == 0 and forward["requests"]["dropped"] == 0
    assert sticky["exposure"]["downgrades"] < forward["exposure"]["downgrades"], (sticky["exposure"],
                                                                                  forward["exposure"])


def test_demo_json_completes_with_zero_dropped(cli: Cli, tmp_path: Path) -> None:
    report = assert_passes(cli.run("demo", "--size", "3", "--port", str(cli.port), *LOAD, "--json",
                                   "--report", str(tmp_path / "demo")))
    assert report["outcome"] == "completed" and report["requests"]["dropped"] == 0
    assert report["size"] == 3 and report["to_version"] == "v2"
    assert (tmp_path / "demo" / "chart.png").stat().st_size > 10_000
    assert cli.run("status").returncode == 1  # torn down without --keep


def test_compare_tells_strategies_apart_and_exits_on_their_verdicts(cli: Cli, tmp_path: Path) -> None:
    """Two graceful strategies on fresh fleets. That naive's verdict never sets compare's exit code and
    shows as skipped in JUnit is tested on reports (tests/unit/test_verdict.py, test_junit.py);
    test_rollout_e2e shows a real naive run dropping."""
    proc = cli.run("compare", "--size", "3", "--port", str(cli.port), "--strategies", "one-at-a-time,blue-green",
                   *LOAD, "--report", str(tmp_path), "--json", "--junit", str(tmp_path / "compare.xml"))
    table = {line["strategy"]: line for line in json.loads(proc.stdout)["rows"]}
    assert set(table) == {"one-at-a-time", "blue-green"}, proc.stderr
    graceful = [table["one-at-a-time"], table["blue-green"]]
    assert [line["verdict"] for line in graceful] == ["PASS", "PASS"], table
    assert all(line["pass"] for line in graceful) and proc.returncode == 0, (proc.returncode, table, proc.stderr)
    # one at a time, every user gets both versions while the fleet is mixed; one switch: (nearly) none
    one, switch = table["one-at-a-time"], table["blue-green"]
    assert one["users_saw_both"] == one["users_total"] == 10
    assert switch["users_saw_both"] <= 2 < one["users_saw_both"], (one, switch)
    assert "verdict" in (tmp_path / "compare.md").read_text().splitlines()[0]
    # --junit: a suite per strategy, with no failure where every check held
    suites = {s.get("name", "").split()[2]: s for s in ET.parse(tmp_path / "compare.xml").getroot()}
    assert list(suites) == ["one-at-a-time", "blue-green"]
    assert [int(suites[n].get("failures") or 0) for n in ("one-at-a-time", "blue-green")] == [0, 0]
