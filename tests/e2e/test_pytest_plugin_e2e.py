"""The sandbox_fleet fixture as a user meets it: a pytest session of its own (``pytester``, in a
subprocess) runs a small test file against a real Docker engine, NGINX and Locust, and afterwards
nothing of its projects is left on the engine, whether that user test passed or failed."""

from __future__ import annotations

import tomllib

import docker
import pytest

from sandbox.fleet.images import ImageSet
from tests.e2e.conftest import REPO, project_objects

pytestmark = pytest.mark.e2e

USER_ROLL = """
import json
import urllib.request
from pathlib import Path


def test_rollout_drops_nothing(sandbox_fleet):
    fleet = sandbox_fleet(size=2, env={"APP_VERSION_HEADER": "0"})
    Path("projects.txt").write_text(fleet.project)
    with urllib.request.urlopen(fleet.url + "/api/items/1", timeout=10) as resp:
        assert resp.status == 200
    assert sorted(i["version"] for i in fleet.status()["instances"]) == ["old", "old"]
    roll = fleet.roll(to="new", strategy="one-at-a-time", users=10, warmup=2, cooldown=2, path=["/api/items/1"])
    report, code = roll
    Path("report.json").write_text(json.dumps(report))
    assert roll.dropped == 0, roll.failed_checks
    assert roll.failed_checks == [] and roll.passed, roll.failed_checks
    assert code == 0
    assert sorted(i["version"] for i in fleet.status()["instances"]) == ["new", "new"]
    back, code = fleet.rollback(no_load=True)
    assert (back["to_version"], code) == ("old", 0), back.get("verdict")
    assert sorted(i["version"] for i in fleet.status()["instances"]) == ["old", "old"]
"""

USER_FAILS = """
from pathlib import Path


def test_fails_with_a_fleet_up(sandbox_fleet):
    fleet = sandbox_fleet(size=1)
    Path("projects.txt").write_text(fleet.project)
    assert fleet.status()["instances"][0]["state"] == "running"
    raise AssertionError("the user's own check failed")
"""

QUIET = ("-p", "no:cacheprovider", "-p", "no:asyncio")  # the inner session needs neither


@pytest.fixture
def session(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, image_set: ImageSet) -> pytest.Pytester:
    """An empty directory whose pytest imports this checkout's ``sandbox`` (so do the ``sandbox``
    commands the fixture runs) and names two versions of the toy app as the user's images."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeini("[pytest]\nsandbox_images =\n"
                     f"    old={image_set.app['v1']}\n    new={image_set.app['v2']}\n")
    return pytester


def _project(session: pytest.Pytester) -> str:
    project = (session.path / "projects.txt").read_text().strip()
    assert project.startswith("pytest-"), project
    return project


def test_a_user_test_rolls_its_fleet_and_leaves_nothing(session: pytest.Pytester,
                                                        client: docker.DockerClient) -> None:
    session.makepyfile(test_user=USER_ROLL)
    result = session.runpytest_subprocess("-p", "sandbox.pytest_plugin", *QUIET, timeout=900)
    result.assert_outcomes(passed=1)
    project = _project(session)
    assert project_objects(client, project) == []
    report = (session.path / "report.json").read_text()
    assert '"to_version": "new"' in report, report[:500]


def test_a_failing_user_test_still_tears_its_fleet_down(session: pytest.Pytester,
                                                        client: docker.DockerClient) -> None:
    session.makepyfile(test_user=USER_FAILS)
    result = session.runpytest_subprocess("-p", "sandbox.pytest_plugin", *QUIET, timeout=600)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the user's own check failed*"])
    assert project_objects(client, _project(session)) == []


def test_the_installed_entry_point_loads_the_fixture_once(pytester: pytest.Pytester,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """pyproject's pytest11 entry point, as an installed distribution declares it (a dist-info on the
    path): the fixture is there with no ``-p``, and ``-p sandbox.pytest_plugin`` on top of it is harmless."""
    entry_points = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["pytest11"]
    site = pytester.mkdir("site")
    dist = site / "rolling_sandbox_probe-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rolling-sandbox-probe\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[pytest11]\n" + "".join(f"{name} = {target}\n" for name, target in entry_points.items()))
    monkeypatch.setenv("PYTHONPATH", f"{REPO}:{site}")
    pytester.makepyfile(test_user="def test_it(sandbox_fleet):\n    assert callable(sandbox_fleet)\n")
    for extra in ((), ("-p", "sandbox.pytest_plugin")):
        result = pytester.runpytest_subprocess(*QUIET, *extra, timeout=120)
        result.assert_outcomes(passed=1)
    result = pytester.runpytest_subprocess(*QUIET, "-p", f"no:{next(iter(entry_points))}", timeout=120)
    result.stdout.fnmatch_lines(["*fixture 'sandbox_fleet' not found*"])

