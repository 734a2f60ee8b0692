"""--mixed-check and --seed: the seeded plan, the checks' runner, their verdict, report and JUnit cases,
their settings, and a rehearsal against the fakes that runs them while both versions are attached."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from sandbox import cli
from sandbox.config import Settings, load_settings
from sandbox.errors import EXIT_USAGE, PlanError, UsageError
from sandbox.results.junit import junit_xml
from sandbox.results.markdown import markdown_page
from sandbox.results.model import Figures, MixedRecord, Report, Rollout
from sandbox.results.report import build_report
from sandbox.results.text import summary_text
from sandbox.results.verdict import exit_code
from sandbox.rollout import mixed
from sandbox.rollout.plan import PlanSettings, Server, merge_reloads, pick_order, plan, validate
from tests.unit.test_plan import STRATEGY_MODES, fleet_of
from tests.unit.test_rehearsal import World, settings

# --------------------------------------------------------------------------- the seeded plan


def _order(n: int, seed: int | None, strategy: str = "one-at-a-time", batch: int = 1) -> list[list[int]]:
    return pick_order(merge_reloads(plan(fleet_of(n), PlanSettings(n, "v2", strategy, batch, seed=seed))))  # type: ignore[arg-type]


def test_unseeded_order_is_slot_order_and_a_seed_shuffles_it_the_same_way_each_time() -> None:
    assert _order(9, None) == [[i] for i in range(1, 10)]
    seeded = _order(9, 7)
    assert seeded == _order(9, 7)  # the same seed, the same picks: a failure can be replayed
    assert seeded != _order(9, None) and sorted(s for b in seeded for s in b) == list(range(1, 10))
    assert _order(9, 8) != seeded
    assert _order(6, 7, "rolling", 2) == _order(6, 7, "rolling", 2)
    assert all(len(b) == 2 for b in _order(6, 7, "rolling", 2))


@pytest.mark.parametrize(("strategy", "mode"), STRATEGY_MODES)
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_seeded_plans_still_validate(strategy: str, mode: str, seed: int) -> None:
    for n in (1, 4, 9):
        fleet = fleet_of(n)
        # a resumed fleet too: an empty slot and a detached server are still taken first
        resumed = [Server("a1", 1, "v1", False), *fleet[2:]]
        for start in (fleet, resumed):
            batch = 1 if strategy == "rolling" and n == 1 else min(2, n)
            if strategy == "rolling" and batch >= n:
                continue
            ps = PlanSettings(n, "v2", strategy, batch, mode, seed=seed)  # type: ignore[arg-type]
            steps = plan(start, ps)
            validate(start, ps, steps)
            validate(start, ps, merge_reloads(steps))


def test_a_resumed_fleet_still_rebuilds_empty_and_detached_slots_first() -> None:
    fleet = [Server("a1", 1, "v1", False), *fleet_of(6)[2:]]  # slot 1 detached, slot 2 empty
    for seed in range(10):
        first = _order_fleet(fleet, seed)[:2]
        assert first == [[2], [1]], seed


def _order_fleet(fleet: list[Server], seed: int) -> list[list[int]]:
    return pick_order(plan(fleet, PlanSettings(6, "v2", seed=seed)))


@pytest.mark.parametrize("seed", [-1, True, "7", 1.5])
def test_a_bad_seed_names_the_field(seed: Any) -> None:
    with pytest.raises(PlanError, match=r"^seed: "):
        plan(fleet_of(3), PlanSettings(3, "v2", seed=seed))


# --------------------------------------------------------------------------- running one check


def _run(command: str, timeout_s: float = 5, **kw: Any) -> MixedRecord:
    return asyncio.run(mixed.run_check(command, index=2, env={"SANDBOX_URL": "http://127.0.0.1:9"},
                                       timeout_s=timeout_s, **kw))


def test_a_passing_check_sees_sandbox_url_and_its_output_is_kept() -> None:
    record = _run('echo "url=$SANDBOX_URL"; echo note >&2')
    assert record.name == "mixed_check_2" and record.status == "passed" and record.exit_code == 0
    assert record.stdout_tail == "url=http://127.0.0.1:9\n" and record.stderr_tail == "note\n"
    assert record.duration_s is not None and 0 <= record.duration_s < 5


def test_a_failing_check_keeps_its_exit_code_and_only_the_tail_of_its_output() -> None:
    record = _run("python3 -c 'print(\"a\" * 50000 + \"END\")'; exit 3", tail=100)
    assert (record.status, record.exit_code) == ("failed", 3)
    assert len(record.stdout_tail) == 100 and record.stdout_tail.endswith("END\n")


def test_a_check_past_its_timeout_is_killed_with_what_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "child"
    t0 = time.monotonic()
    record = _run(f"sleep 30 & echo $! > {pid_file}; wait", timeout_s=0.5)
    assert time.monotonic() - t0 < 5
    assert record.status == "timed_out" and record.exit_code != 0
    assert "killed after 0.5 s" in record.stderr_tail
    assert _gone(int(pid_file.read_text()))  # the background sleep went with the group


def test_a_cancelled_check_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    async def go() -> None:
        task = asyncio.create_task(mixed.run_check(f"echo $$ > {pid_file}; sleep 30", index=1, env={},
                                                   timeout_s=60))
        while not pid_file.exists() or not pid_file.read_text().strip():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert _gone(int(pid_file.read_text()))


def test_what_a_finished_check_left_in_the_background_ends_with_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "child"
    record = _run(f"sleep 30 >/dev/null 2>&1 & echo $! > {pid_file}", timeout_s=10)
    assert record.status == "passed"
    assert _gone(int(pid_file.read_text()))


def _gone(pid: int) -> bool:
    """The process ended within 2 s (exited, or a zombie its new parent has not reaped yet)."""
    for _ in range(100):
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def test_finish_says_why_a_check_did_not_run() -> None:
    never = mixed.finish(("a", "b"), None, "completed")
    assert [(r.name, r.status) for r in never] == [("mixed_check_1", "not_run"), ("mixed_check_2", "not_run")]
    assert never[0].reason == mixed.NEVER_MIXED
    assert "rolled_back" in str(mixed.finish(("a",), None, "rolled_back")[0].reason)
    ran = [MixedRecord("mixed_check_1", "a", "passed", exit_code=0, duration_s=0.1)]
    cut = mixed.finish(("a", "b"), ran, "interrupted")
    assert cut[0] == ran[0] and cut[1].name == "mixed_check_2" and "interrupted" in str(cut[1].reason)
    assert mixed.is_mixed(["v1", "v2", "v2"]) and not mixed.is_mixed(["v2", "v2"]) and not mixed.is_mixed([])


# --------------------------------------------------------------------------- verdict, report, JUnit

PASSED = MixedRecord("mixed_check_1", "curl -fs $SANDBOX_URL/", "passed", exit_code=0, duration_s=0.2,
                     stdout_tail="ok\n")
FAILED = MixedRecord("mixed_check_2", "./contract-test.sh", "failed", exit_code=3, duration_s=1.5,
                     stderr_tail="field 'name' missing\n")
NOT_RUN = mixed.not_run(["./never.sh"], mixed.NEVER_MIXED, start=3)[0]


def failed_names(report: Report | dict[str, Any]) -> list[str]:
    """The failed checks of a report, or of the JSON a rehearsal returned."""
    return (report if isinstance(report, Report) else Report.from_json(report)).verdict.failed_names


def _report(*records: MixedRecord, seed: int | None = None) -> Report:
    run = Rollout(strategy="one-at-a-time", size=3, outcome="completed", load=False, from_version="v1",
                  to_version="v2", seed=seed, pick_order=((2,), (3,), (1,)), mixed_checks=records)
    return build_report(run=run, figures=Figures(), steps=[])


def test_a_passing_check_passes_a_failing_one_fails_and_is_named_with_its_command() -> None:
    assert _report(PASSED).passed and exit_code(_report(PASSED)) == 0
    report = _report(PASSED, FAILED)
    assert failed_names(report) == ["mixed_check_2"] and exit_code(report) == 1
    checks = {c["name"]: c for c in report.to_json()["verdict"]["checks"]}
    assert (checks["mixed_check_1"]["pass"], checks["mixed_check_2"]["value"]) == (True, 3)
    assert report.verdict.line() == "FAIL: mixed_check_2 exit 3 (must exit 0): ran 1.5 s: ./contract-test.sh"
    text = summary_text(report)
    assert "  mixed_check_2: FAIL exit 3 in 1.5 s: ./contract-test.sh\n    field 'name' missing" in text
    assert "  FAIL mixed_check_2" in text and "  PASS mixed_check_1" in text


def test_a_check_that_never_ran_holds_but_is_shown_as_skipped_never_as_a_plain_pass() -> None:
    report = _report(PASSED, NOT_RUN)
    assert report.passed is True
    check = report.to_json()["verdict"]["checks"][-1]
    assert check.items() >= {"name": "mixed_check_3", "pass": True, "value": None, "limit": 0, "skipped": True,
                             "note": f"{mixed.NEVER_MIXED}: ./never.sh", "status": "NOT_RUN"}.items()
    assert report.verdict.line().endswith("checks held (1 not run: mixed_check_3)")
    text = summary_text(report)
    assert "  SKIP mixed_check_3" in text and "NOT RUN ./never.sh (not run: the fleet never had both" in text
    assert "| mixed_check_3 | SKIP |" in markdown_page(report)


def test_the_seed_and_pick_order_are_in_the_report() -> None:
    report = _report(seed=7)
    assert (report.to_json()["seed"], report.to_json()["pick_order"]) == (7, [[2], [3], [1]])
    assert "pick order       [2] [3] [1] (seed 7)" in summary_text(report)
    assert "pick order" not in summary_text(_report())  # without --seed, the text stays as it was
    assert "| pick order | [2] [3] [1] (slot order, no --seed) |" in markdown_page(_report())


def test_junit_has_a_case_per_check_failing_skipped_and_passing_with_its_output() -> None:
    root = ET.fromstring(junit_xml(_report(PASSED, FAILED, NOT_RUN)))
    suite = root.find("testsuite")
    assert suite is not None and (suite.get("failures"), suite.get("skipped")) == ("1", "1")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert {"mixed_check_1", "mixed_check_2", "mixed_check_3", "outcome"} <= set(cases)
    assert cases["mixed_check_1"].find("failure") is None and cases["mixed_check_1"].findtext("system-out") == "ok\n"
    failure = cases["mixed_check_2"].find("failure")
    assert failure is not None and "./contract-test.sh" in (failure.get("message") or "")
    assert cases["mixed_check_2"].findtext("system-err") == "field 'name' missing\n"
    assert cases["mixed_check_2"].get("time") == "1.500"
    skipped = cases["mixed_check_3"].find("skipped")
    assert skipped is not None and "never had both versions" in (skipped.get("message") or "")


# --------------------------------------------------------------------------- settings


def test_settings_from_the_file_the_environment_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "sandbox.toml"
    config.write_text('[sandbox]\nmixed_checks = ["./a.sh", "curl -f $SANDBOX_URL"]\nseed = 4\n'
                      "mixed_check_timeout_s = 5\n")
    s = load_settings(config_path=config, environ={})
    assert (s.mixed_checks, s.seed, s.mixed_check_timeout_s) == (("./a.sh", "curl -f $SANDBOX_URL"), 4, 5.0)
    s = load_settings(environ={"SANDBOX_MIXED_CHECKS": "./a.sh\n./b.sh, with a comma", "SANDBOX_SEED": "9"})
    assert (s.mixed_checks, s.seed) == (("./a.sh", "./b.sh, with a comma"), 9)
    args = cli.build_parser().parse_args(["roll", "--mixed-check", "x", "--mixed-check", "y z", "--seed", "3"])
    s = cli.settings_from_args(args)
    assert (s.mixed_checks, s.seed) == (("x", "y z"), 3)
    assert Settings().seed is None and Settings().mixed_checks == ()


@pytest.mark.parametrize(("toml", "fragment"), [
    ('mixed_checks = "[1]"\nseed = -1', "seed: -1 must be a whole number >= 0"),
    ("mixed_checks = [1, 2]", "mixed_checks: [1, 2] is not a valid value"),
    ('mixed_checks = ["ok", "  "]', "mixed_checks: '  ' must be a non-empty shell command"),
    ("seed = 1.5", "seed: 1.5 is not a valid value"),
    ("seed = true", "seed: True is not a valid value"),
    ("mixed_check_timeout_s = 0", "mixed_check_timeout_s: 0.0 must be in (0, 3600] seconds"),
])
def test_bad_values_in_the_file_name_the_field(tmp_path: Path, toml: str, fragment: str) -> None:
    config = tmp_path / "sandbox.toml"
    config.write_text(f"[sandbox]\n{toml}\n")
    with pytest.raises(UsageError) as caught:
        load_settings(config_path=config, environ={})
    assert fragment in str(caught.value)


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--seed", "-3"], "seed: -3 must be a whole number >= 0"),
    (["--seed", "x"], "'x' is not an integer"),
    (["--mixed-check", ""], "--mixed-check: '' must be a non-empty shell command"),
    (["--mixed-check-timeout", "-1"], "--mixed-check-timeout: -1.0 must be in (0, 3600] seconds"),
])
def test_bad_flags_are_one_line_and_exit_2_before_docker_is_touched(
        argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.engines, "connect", lambda *a, **k: pytest.fail("Docker was touched"))
    try:
        code = cli.main(["roll", "--project", "p", *argv])
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and fragment in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- a rehearsal against the fakes


@pytest.mark.asyncio
async def test_checks_run_once_while_both_versions_are_attached_and_a_failing_one_fails_the_run(
        tmp_path: Path) -> None:
    world = World()
    seen = tmp_path / "seen"
    checks = (f'echo "$SANDBOX_VERSIONS $SANDBOX_URL" >> {seen}', "echo broken >&2; exit 3")
    result = await world.rehearse(settings(mixed_checks=checks))
    report = result.report
    assert report["outcome"] == "completed" and result.exit_code == 1  # the rollout went on; the verdict fails
    assert seen.read_text() == f"v1,v2 {world.balancer.url}\n"  # once, with both versions attached
    statuses = [(r["name"], r["status"], r["exit_code"]) for r in report["mixed_checks"]]
    assert statuses == [("mixed_check_1", "passed", 0), ("mixed_check_2", "failed", 3)]
    assert report["mixed_checks"][0]["attached"] == {"v1": 1, "v2": 1}  # the reattach took the next one out
    assert failed_names(report) == ["mixed_check_2"] and world.attached_versions() == {"v2"}
    phases = [s["phase"] for s in report["steps"]]
    i = phases.index("mixed-check")
    assert phases.count("mixed-check") == 2 and phases[i + 1] == "mixed-check"  # nothing ran in between
    assert phases[:i].count("attach") == 1  # right after the first new server was attached
    assert "mixed_check_2 FAILED: echo broken >&2; exit 3: broken" in world.stream.getvalue()


@pytest.mark.asyncio
async def test_blue_green_never_mixes_so_its_checks_are_skipped_and_the_run_passes() -> None:
    world = World()
    result = await world.rehearse(settings(strategy="blue-green", mixed_checks=("exit 3",), min_requests=0))
    assert result.report["mixed_checks"][0]["status"] == "not_run" and result.exit_code == 0
    assert [c["name"] for c in result.report["verdict"]["checks"] if c.get("skipped")] == ["mixed_check_1"]


@pytest.mark.asyncio
async def test_a_seeded_roll_reports_its_seed_and_order_and_the_same_seed_picks_the_same_way() -> None:
    orders = []
    for _ in range(2):
        world = World(n=5)
        result = await world.rehearse(settings(seed=11))
        stops = [s["slot"] for s in result.report["steps"] if s["phase"] == "stop"]
        assert result.report["seed"] == 11 and [[s] for s in stops] == result.report["pick_order"]
        orders.append(result.report["pick_order"])
    assert orders[0] == orders[1] and orders[0] != [[i] for i in range(1, 6)]


def test_a_timed_out_check_fails_and_a_pipe_in_its_command_keeps_the_markdown_table_whole() -> None:
    record = MixedRecord("mixed_check_1", "curl -s $SANDBOX_URL | jq .", "timed_out", exit_code=-9,
                         duration_s=60.0, stderr_tail="(killed after 60 s)")
    report = _report(record)
    assert failed_names(report) == ["mixed_check_1"]
    assert report.verdict.checks[-1].reason == "killed at the timeout after 60.0 s: curl -s $SANDBOX_URL | jq ."
    row = next(line for line in markdown_page(report).splitlines() if line.startswith("| mixed_check_1 |"))
    assert row.count(" | ") == 4 and "curl -s $SANDBOX_URL \\| jq ." in row  # five cells, the pipe escaped
    assert "mixed_check_1: FAIL (timed out) exit -9 in 60.0 s" in summary_text(report)


@pytest.mark.asyncio
async def test_a_fleet_already_on_the_target_says_its_checks_did_not_run() -> None:
    world = World(version="v2")
    result = await world.rehearse(settings(mixed_checks=("exit 3",), seed=5))
    assert result.exit_code == 0 and result.report["seed"] == 5 and result.report["pick_order"] == []
    [record] = result.report["mixed_checks"]
    assert record["status"] == "not_run" and "nothing to roll" in record["reason"]
