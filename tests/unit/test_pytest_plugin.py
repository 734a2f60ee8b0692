"""The sandbox_fleet plugin without Docker: its flag mapping, its factory driven by a fake ``sandbox``,
and the fixture inside a small pytest session of its own (teardown after a failing test)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sandbox import pytest_plugin as plugin
from sandbox.pytest_plugin import Fleet, FleetCommandError, FleetFactory, Roll, flag_args, parse_images

REPORT = {"requests": {"dropped": 2}, "verdict": {"pass": False, "checks": [
    {"name": "outcome", "pass": True, "value": "completed", "limit": "completed"},
    {"name": "dropped", "pass": False, "value": 2, "limit": 0}]}}


class FakeSandbox:
    """Records each ``sandbox`` command; answers from a table of (command -> exit code, stdout, stderr)."""

    def __init__(self, answers: dict[str, list[tuple[int, str, str]]] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(args))
        queue = self.answers.get(args[0]) or [(0, "{}", "")]
        code, out, err = queue.pop(0) if len(queue) > 1 else queue[0]
        return subprocess.CompletedProcess(list(args), code, out, err)

    def commands(self) -> list[tuple[str, str]]:
        """(command, project) of every call."""
        return [(c[0], c[c.index("--project") + 1]) for c in self.calls]


@pytest.mark.parametrize(("flags", "expected"), [
    ({"batch": 3}, ["--batch", "3"]),
    ({"no_load": True, "sticky": False, "version": None}, ["--no-load"]),
    ({"path": ["/a", "/b"]}, ["--path", "/a", "--path", "/b"]),
    ({"set_env": {"APP_LATENCY_MS": 50, "K": "v"}}, ["--set-env", "APP_LATENCY_MS=50", "--set-env", "K=v"]),
    ({"max_p99_ratio": 4.5, "health_path": "/ready"}, ["--max-p99-ratio", "4.5", "--health-path", "/ready"]),
])
def test_keyword_arguments_become_sandbox_flags(flags: dict[str, Any], expected: list[str]) -> None:
    assert flag_args(flags) == expected


def test_image_pairs_parse_and_a_malformed_one_is_named() -> None:
    assert parse_images([" old=myapp:1 ", "new=myapp:2"]) == {"old": "myapp:1", "new": "myapp:2"}
    with pytest.raises(pytest.UsageError, match="'myapp:1' must be NAME=REF"):
        parse_images(["myapp:1"])


def test_a_roll_unpacks_and_names_its_failed_checks() -> None:
    report, code = roll = Roll(REPORT, 1)
    assert report is REPORT and code == 1
    assert (roll.passed, roll.dropped) == (False, 2)
    assert [c["name"] for c in roll.failed_checks] == ["dropped"]


def test_up_passes_size_port_images_and_flags_under_a_unique_project() -> None:
    fake = FakeSandbox()
    factory = FleetFactory(runner=fake, images={"v1": "a:1"}, engine="swarm", timeout=5)
    one = factory(size=2, port=18080, health_path="/ready", env={"K": "V"})
    two = factory({"x": "b:1", "y": "b:2"}, port=18081, version="x")
    assert one.project != two.project and one.project.startswith("pytest-")
    assert one.url == "http://127.0.0.1:18080"
    assert fake.calls[0] == ["up", "--size", "2", "--port", "18080", "--image", "v1=a:1", "--health-path", "/ready",
                             "--env", "K=V", "--project", one.project, "--engine", "swarm"]
    assert fake.calls[1][:10] == ["up", "--size", "3", "--port", "18081", "--image", "x=b:1", "--image", "y=b:2",
                                  "--version"]


def test_a_port_taken_before_up_binds_it_is_picked_again_only_when_the_fixture_chose_it() -> None:
    taken = (2, "", "sandbox: error: port: 127.0.0.1:40000 is already in use")
    fake = FakeSandbox({"up": [taken, (0, "", "")]})
    factory = FleetFactory(runner=fake, images={}, engine=None, timeout=5)
    fleet = factory()
    first, second = (c[c.index("--port") + 1] for c in fake.calls)
    assert first != second and fleet.port == int(second) and factory.fleets == [fleet]
    fake = FakeSandbox({"up": [taken]})
    with pytest.raises(FleetCommandError, match="exited 2"):
        FleetFactory(runner=fake, images={}, engine=None, timeout=5)(port=40000)
    assert len(fake.calls) == 1
    fake = FakeSandbox({"up": [(2, "", "sandbox: error: image: x=no:such: no such local image")]})
    with pytest.raises(FleetCommandError, match="no such local image"):
        FleetFactory(runner=fake, images={"x": "no:such"}, engine=None, timeout=5)()
    assert len(fake.calls) == 1


def test_close_downs_every_fleet_newest_first_even_one_whose_up_failed() -> None:
    fake = FakeSandbox({"up": [(0, "", ""), (1, "", "sandbox: error: image build failed")]})
    factory = FleetFactory(runner=fake, images={}, engine=None, timeout=5)
    ok = factory()
    with pytest.raises(FleetCommandError, match="image build failed"):
        factory()
    broken = factory.fleets[-1]
    assert factory.close() == []
    assert fake.commands()[-2:] == [("down", broken.project), ("down", ok.project)]
    assert factory.fleets == []


def test_close_tries_every_fleet_and_returns_what_failed() -> None:
    fake = FakeSandbox({"down": [(1, "", "sandbox: error: engine gone"), (0, "", "")]})
    factory = FleetFactory(runner=fake, images={}, engine=None, timeout=5)
    first, second = factory(), factory()
    errors = factory.close()
    assert len(errors) == 1 and errors[0].startswith(second.project) and "engine gone" in errors[0]
    assert fake.commands()[-1] == ("down", first.project)


def test_roll_returns_report_and_exit_code_and_raises_on_bad_input() -> None:
    fake = FakeSandbox({"roll": [(1, json.dumps(REPORT), "progress"), (2, "", "sandbox: error: batch: too big")]})
    fleet = Fleet("p1", 18080, runner=fake)
    roll = fleet.roll(to="v2", strategy="rolling", batch=2, no_load=True)
    assert (roll.exit_code, roll.report, roll.stderr) == (1, REPORT, "progress")
    assert fake.calls[0] == ["roll", "--to", "v2", "--strategy", "rolling", "--batch", "2", "--no-load", "--json",
                             "--project", "p1"]
    with pytest.raises(FleetCommandError, match="batch: too big") as info:
        fleet.roll(batch=9)
    assert info.value.exit_code == 2


def test_status_that_is_not_json_raises_with_what_sandbox_said() -> None:
    fleet = Fleet("p1", 18080, runner=FakeSandbox({"status": [(0, "not json", "odd")]}))
    with pytest.raises(FleetCommandError, match="odd"):
        fleet.status()


QUIET = ("-p", "no:cacheprovider", "-p", "no:asyncio", "-W", "ignore::pytest.PytestAssertRewriteWarning")
"""An inner session without a cache, pytest-asyncio's warning about its unset loop scope, or the note
that this module's plugin was imported before the inner session could rewrite it."""

USER_TEST = """
def test_fails_after_up(sandbox_fleet):
    fleet = sandbox_fleet(size=1)
    assert fleet.url.startswith("http://127.0.0.1:")
    assert False, "the user's assertion failed"
"""


def test_the_fixture_tears_down_after_a_failing_test(pytester: pytest.Pytester,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSandbox()
    monkeypatch.setattr(plugin, "subprocess_runner", lambda: fake)
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest_inprocess("-p", "sandbox.pytest_plugin", "--sandbox-image", "old=my:1",
                                          *QUIET)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the user's assertion failed*"])
    (up, project), (down, same) = fake.commands()
    assert (up, down, same) == ("up", "down", project) and "old=my:1" in fake.calls[0]


def test_a_failed_down_is_an_error_of_the_test(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSandbox({"down": [(1, "", "sandbox: error: the Docker engine does not answer")]})
    monkeypatch.setattr(plugin, "subprocess_runner", lambda: fake)
    pytester.makepyfile(test_user="def test_up(sandbox_fleet):\n    sandbox_fleet()\n")
    result = pytester.runpytest_inprocess("-p", "sandbox.pytest_plugin", *QUIET)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*sandbox_fleet teardown: pytest-* exited 1", "*engine does not answer"])


def test_a_malformed_ini_image_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nsandbox_images =\n    v1=a:1\n    nonsense\n")
    pytester.makepyfile(test_user="def test_up(sandbox_fleet):\n    sandbox_fleet()\n")
    result = pytester.runpytest_inprocess("-p", "sandbox.pytest_plugin", *QUIET)
    result.stdout.fnmatch_lines(["*'nonsense' must be NAME=REF*"])
    assert result.ret != 0


def test_the_plugin_imports_nothing_heavy() -> None:
    """Installed, it loads into every pytest session: no Docker SDK, Locust, gevent, aiohttp or other
    module of ours at import but the exception tree and the port picker (standard library only)."""
    code = ("import sys, sandbox.pytest_plugin; print(sorted(m for m in sys.modules "
            "if m not in ('sandbox.pytest_plugin', 'sandbox.errors', 'sandbox.ports') "
            "and (m.split('.')[0] in ('docker', 'locust', 'gevent', 'aiohttp') or m.startswith('sandbox.'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
