"""Hooks (``--hook EVENT=CMD``): parsing and validation, the environment a hook gets, the records,
and the rehearsal's order of things against the fakes (pre-rollout stops before anything changes,
post-batch rolls back, post-rollout fails the verdict, on-rollback is reported); a fleet whose
PostgreSQL is down is refused before anything changes."""

from __future__ import annotations

import json
import shlex
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sandbox import cli
from sandbox.config import load_settings
from sandbox.errors import EXIT_USAGE, DatabaseDown, HookError, NotFoundError, UsageError
from sandbox.results.junit import junit_xml
from sandbox.results.markdown import markdown_page
from sandbox.results.model import Report
from sandbox.results.text import summary_text
from sandbox.rollout import hooks, steer, strategies
from sandbox.rollout.rehearsal import Rehearsal
from sandbox.ui.progress import Progress
from tests.unit.test_rehearsal import World, settings
from tests.unit.test_steer import _paused, _rolling


# -- parsing and validation --------------------------------------------------------------------------
def test_each_event_parses_and_the_command_keeps_its_own_equals_signs() -> None:
    parsed = hooks.parse_all(["pre-rollout=./backup.sh", "post-batch = curl -fsS $SANDBOX_URL/healthz?a=b",
                              "post-rollout=true", "on-rollback=echo back"])
    assert [(h.event, h.command) for h in parsed] == [
        ("pre-rollout", "./backup.sh"), ("post-batch", "curl -fsS $SANDBOX_URL/healthz?a=b"),
        ("post-rollout", "true"), ("on-rollback", "echo back")]
    assert hooks.of(parsed + hooks.parse_all(["post-batch=two"]), "post-batch") == (
        "curl -fsS $SANDBOX_URL/healthz?a=b", "two")


@pytest.mark.parametrize(("text", "fragment"), [
    ("pre-deploy=./x", "unknown event 'pre-deploy'; one of pre-rollout, post-batch, post-rollout, on-rollback"),
    ("post-batch=", "the post-batch hook's command is empty"),
    ("post-batch=   ", "the post-batch hook's command is empty"),
    ("./smoke.sh", "must be EVENT=CMD"),
    ("=./smoke.sh", "unknown event ''"),
])
def test_bad_hooks_are_refused_naming_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        hooks.parse(text)


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--hook", "pre-deploy=./x"], "--hook: 'pre-deploy=./x': unknown event 'pre-deploy'"),
    (["--hook", "post-batch="], "--hook: 'post-batch=': the post-batch hook's command is empty"),
    (["--hook", "true"], "--hook: 'true' must be EVENT=CMD"),
    (["--hook-timeout", "0"], "--hook-timeout: 0.0 must be in (0, 3600] seconds"),
])
def test_bad_hook_flags_are_one_line_and_exit_2_before_docker_is_touched(
        argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.engines, "connect", lambda *a, **k: pytest.fail("Docker was touched"))
    for command in ("roll", "demo"):
        try:
            code = cli.main([command, "--project", "p", *argv])
        except SystemExit as exc:  # argparse's own errors
            code = int(exc.code or 0)
        err = capsys.readouterr().err
        assert code == EXIT_USAGE and fragment in err and len(err.strip().splitlines()) == 1, (command, err)


def test_hooks_come_from_the_toml_file_and_the_environment_too(tmp_path: Path) -> None:
    config = tmp_path / "sandbox.toml"
    config.write_text('[rollout]\nhooks = ["pre-rollout=./a.sh", "post-batch=./b.sh"]\nhook_timeout_s = 5\n')
    loaded = load_settings(config_path=config, environ={})
    assert (loaded.hooks, loaded.hook_timeout_s) == (("pre-rollout=./a.sh", "post-batch=./b.sh"), 5.0)
    env = load_settings(config_path=config, environ={"SANDBOX_HOOKS": "post-rollout=./c.sh\non-rollback=./d.sh"})
    assert env.hooks == ("post-rollout=./c.sh", "on-rollback=./d.sh")
    config.write_text('[rollout]\nhooks = ["later=./a.sh"]\n')
    with pytest.raises(UsageError, match=r"^rollout.hooks: 'later=./a.sh': unknown event 'later'"):
        load_settings(config_path=config, environ={})


def test_rollback_and_compare_take_no_hook_flag() -> None:
    assert "hooks" in cli.setting_flags("roll") and "hooks" in cli.setting_flags("demo")
    assert "hooks" not in cli.setting_flags("rollback") and "hooks" not in cli.setting_flags("compare")


# -- names, the environment, the database URL from the host --------------------------------------------
def test_names_say_the_event_the_batch_and_which_command() -> None:
    assert hooks.name_of("pre-rollout", 1, 1) == "hook_pre_rollout"
    assert hooks.name_of("post-batch", 1, 1, batch=2) == "hook_post_batch_b2"
    assert hooks.name_of("post-batch", 2, 3, batch=2) == "hook_post_batch_b2_2"
    assert hooks.name_of("on-rollback", 2, 2) == "hook_on_rollback_2"


def test_the_host_database_url_keeps_user_password_and_database_on_127_0_0_1() -> None:
    url = "postgresql://app:s3cret@p-postgres:5432/postgres"
    assert hooks.host_database_url(url, 54321) == "postgresql://app:s3cret@127.0.0.1:54321/postgres"
    assert hooks.host_database_url(url, None) == ""  # a server that publishes no port
    assert hooks.host_database_url("", 54321) == ""  # no database


def test_the_environment_a_hook_gets() -> None:
    env = hooks.environment(url="http://127.0.0.1:8080", project="shop", source="v1", target="v2",
                            event="post-batch", batch=3, database_url="postgresql://a:b@127.0.0.1:1/d")
    assert env == {"SANDBOX_URL": "http://127.0.0.1:8080", "SANDBOX_PROJECT": "shop", "SANDBOX_VERSIONS": "v1,v2",
                   "SANDBOX_EVENT": "post-batch", "SANDBOX_BATCH": "3", "DATABASE_URL": "postgresql://a:b@127.0.0.1:1/d",
                   # as a mixed check gets them: the versions by role and how to reach one on purpose
                   "SANDBOX_FROM": "v1", "SANDBOX_TO": "v2", "SANDBOX_VERSION_HEADER": "X-Sandbox-Version",
                   "SANDBOX_VERSION_COOKIE": "sandbox_version"}
    other = hooks.environment(url="u", project="p", source="v1", target="v2", event="pre-rollout", batch=None,
                              database_url="")
    assert (other["SANDBOX_BATCH"], other["DATABASE_URL"]) == ("0", "")


# -- running them --------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_an_events_commands_run_in_order_through_the_shell_until_one_fails() -> None:
    env = {"SANDBOX_BATCH": "2", "SANDBOX_EVENT": "post-batch"}
    records = await hooks.run("post-batch", ['echo "$SANDBOX_EVENT $SANDBOX_BATCH"', "echo boom >&2; exit 3",
                                             "echo never"], env=env, timeout_s=10, batch=2)
    assert [(r.name, r.status, r.exit_code, r.event, r.batch) for r in records] == [
        ("hook_post_batch_b2_1", "passed", 0, "post-batch", 2), ("hook_post_batch_b2_2", "failed", 3, "post-batch", 2),
        ("hook_post_batch_b2_3", "not_run", None, "post-batch", 2)]
    assert records[0].stdout_tail == "post-batch 2\n"
    assert records[2].reason == "not run: hook_post_batch_b2_2 failed first"
    bad = hooks.failed(records)
    assert bad is records[1]
    assert hooks.failure_line(bad, "rolling back") == (
        "post-batch hook 'echo boom >&2; exit 3' failed (exit 3, " f"{bad.duration_s:g} s); rolling back: boom")


@pytest.mark.asyncio
async def test_a_hook_past_its_timeout_is_killed_and_fails() -> None:
    [record] = await hooks.run("pre-rollout", ["echo started; sleep 30"], env={}, timeout_s=0.3)
    assert record.status == "timed_out" and hooks.failed([record]) is record
    assert hooks.failure_line(record, "the fleet was not changed").startswith(
        "pre-rollout hook 'echo started; sleep 30' failed (timed out after ")
    assert hooks.failure_line(record, "x").endswith("; x: started")


def test_a_hook_record_round_trips_with_its_event() -> None:
    [record] = hooks.not_run("post-rollout", ["./smoke.sh"], "not run: the rollout ended (rolled_back)")
    data = record.to_json()
    assert data["event"] == "post-rollout" and data["name"] == "hook_post_rollout"
    assert type(record).from_json(data) == record
    assert "event" not in replace(record, event=None).to_json()  # a mixed check's record is as it was


# -- the rehearsal, against the fakes -------------------------------------------------------------------
def _writer(path: Path) -> str:
    """A hook that appends its event's environment to ``path`` as one JSON line."""
    keys = ("SANDBOX_URL", "SANDBOX_PROJECT", "SANDBOX_VERSIONS", "SANDBOX_EVENT", "SANDBOX_BATCH", "DATABASE_URL")
    script = f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {keys!r}}}))"
    return f"python3 -c {shlex.quote(script)} >> {shlex.quote(str(path))}"


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _with_database(world: World, port: int | None = 54321) -> World:
    world.balancer.state.app_env = {**world.balancer.state.app_env,
                                    "DATABASE_URL": "postgresql://app:pw@p-postgres:5432/postgres"}
    world.runtime.postgres_port = port
    return world


@pytest.mark.asyncio
async def test_a_failing_pre_rollout_hook_stops_before_anything_changes(tmp_path: Path) -> None:
    world = World()
    with pytest.raises(HookError, match=r"^pre-rollout hook 'echo no backup; exit 4' failed \(exit 4, [\d.]+ s\); "
                                        r"the fleet was not changed: no backup$"):
        await world.rehearse(settings(hooks=("pre-rollout=echo no backup; exit 4",
                                             f"post-batch={_writer(tmp_path / 'env')}"),
                                      migrate="python3 -m migrate expand"))
    assert world.runtime.log == []  # no server, no LB change, no migration
    assert world.attached_versions() == {"v1"} and not (tmp_path / "env").exists()


@pytest.mark.asyncio
async def test_hooks_run_at_their_events_with_their_environment(tmp_path: Path) -> None:
    world = _with_database(World())
    out = tmp_path / "env"
    result = await world.rehearse(settings(hooks=tuple(f"{e}={_writer(out)}" for e in hooks.EVENTS)))
    assert result.exit_code == 0 and world.attached_versions() == {"v2"}
    seen = _lines(out)
    assert [(e["SANDBOX_EVENT"], e["SANDBOX_BATCH"]) for e in seen] == [
        ("pre-rollout", "0"), ("post-batch", "1"), ("post-batch", "2"), ("post-batch", "3"), ("post-rollout", "0")]
    assert {(e["SANDBOX_URL"], e["SANDBOX_PROJECT"], e["SANDBOX_VERSIONS"]) for e in seen} == {
        (world.balancer.url, "p", "v1,v2")}
    assert {e["DATABASE_URL"] for e in seen} == {"postgresql://app:pw@127.0.0.1:54321/postgres"}
    records = [r for r in result.report["mixed_checks"] if r.get("event")]
    assert [(r["name"], r["status"]) for r in records] == [
        ("hook_pre_rollout", "passed"), ("hook_post_batch_b1", "passed"), ("hook_post_batch_b2", "passed"),
        ("hook_post_batch_b3", "passed"), ("hook_post_rollout", "passed"), ("hook_on_rollback", "not_run")]
    assert records[-1]["reason"] == "not run: no rollback started"
    checks = {c["name"]: c for c in result.report["verdict"]["checks"]}
    assert checks["hook_post_batch_b2"]["pass"] is True and checks["hook_on_rollback"]["status"] == "NOT_RUN"
    # each batch's post-batch hook ran after its last step, before the next batch began
    steps = [(e["phase"], e.get("batch")) for e in result.report["steps"] if e["phase"] in ("hook", "start", "stop")]
    assert steps.index(("stop", 1)) < steps.index(("hook", 1)) < steps.index(("start", 2))


@pytest.mark.asyncio
async def test_a_failing_post_batch_hook_rolls_back_and_on_rollback_runs(tmp_path: Path) -> None:
    world = World()
    out = tmp_path / "env"
    fail_at_2 = '[ "$SANDBOX_BATCH" != 2 ] || { echo "smoke failed at $SANDBOX_BATCH"; exit 5; }'
    result = await world.rehearse(settings(hooks=(f"post-batch={fail_at_2}", f"on-rollback={_writer(out)}",
                                                  "post-rollout=true")))
    assert result.report["outcome"] == "rolled_back" and result.exit_code == 1
    assert world.attached_versions() == {"v1"}
    assert "smoke failed at 2" in result.message and "post-batch hook" in result.message
    records = {r["name"]: r for r in result.report["mixed_checks"] if r.get("event")}
    assert (records["hook_post_batch_b1"]["status"], records["hook_post_batch_b2"]["status"]) == ("passed", "failed")
    assert records["hook_post_batch_b2"]["exit_code"] == 5 and "hook_post_batch_b3" not in records
    assert records["hook_post_rollout"]["status"] == "not_run"
    assert records["hook_on_rollback"]["status"] == "passed"
    [env] = _lines(out)  # on-rollback ran once, not once per rollback batch
    assert (env["SANDBOX_EVENT"], env["SANDBOX_BATCH"], env["DATABASE_URL"]) == ("on-rollback", "0", "")
    failed = {c["name"] for c in result.report["verdict"]["checks"] if not c["pass"]}
    assert {"outcome", "hook_post_batch_b2"} <= failed and "hook_on_rollback" not in failed


@pytest.mark.asyncio
async def test_a_failing_post_batch_hook_without_auto_rollback_stops_as_a_failed_batch_does() -> None:
    world = World()
    result = await world.rehearse(settings(hooks=("post-batch=exit 1", "on-rollback=true"), auto_rollback=False))
    assert result.report["outcome"] == "failed"
    assert world.attached_versions() == {"v1", "v2"}  # batch 1 is on v2: stopped there, as a failed batch is
    records = {r["name"]: r["status"] for r in result.report["mixed_checks"] if r.get("event")}
    assert records == {"hook_post_batch_b1": "failed", "hook_on_rollback": "not_run"}


@pytest.mark.asyncio
async def test_a_failing_post_rollout_hook_fails_the_verdict_not_the_rollout() -> None:
    world = World()
    result = await world.rehearse(settings(hooks=("post-rollout=echo smoke; exit 2",)))
    assert result.report["outcome"] == "completed" and world.attached_versions() == {"v2"}
    assert result.exit_code == 1
    assert [c["name"] for c in result.report["verdict"]["checks"] if not c["pass"]] == ["hook_post_rollout"]


@pytest.mark.asyncio
async def test_a_rollback_command_runs_no_hook() -> None:
    world = World(version="v2", rollout={"kind": "roll", "from": "v1", "to": "v2", "strategy": "one-at-a-time",
                                         "status": "completed"})
    result = await world.rehearse(replace(settings(), hooks=("pre-rollout=exit 1", "on-rollback=exit 1")),
                                  kind="rollback")
    assert result.exit_code == 0 and not [r for r in result.report["mixed_checks"] if r.get("event")]


@pytest.mark.asyncio
async def test_the_dry_run_plan_lists_the_hooks_and_runs_none() -> None:
    world = World()
    prepared = await Rehearsal(settings(hooks=("pre-rollout=./a.sh", "post-batch=./b.sh")), runtime=world.runtime,
                               progress=Progress(world.stream), deps=world.deps, install_sigint=False).prepare()
    assert "  hook pre-rollout: ./a.sh" in prepared.describe().splitlines()
    assert prepared.as_json()["hooks"] == [{"event": "pre-rollout", "command": "./a.sh"},
                                           {"event": "post-batch", "command": "./b.sh"}]
    assert world.runtime.log == []


# -- a database that is down at roll time ---------------------------------------------------------------
class _Down:
    def __init__(self, answer: tuple[bool, str] | None) -> None:
        self.answer, self.probes = answer, 0

    async def __call__(self, project: str) -> tuple[bool, str]:
        self.probes += 1
        if self.answer is None:
            raise NotFoundError(f"project {project!r} has no PostgreSQL server")
        return self.answer


@pytest.mark.asyncio
@pytest.mark.parametrize(("answer", "said"), [((False, "p-postgres is exited"), "p-postgres is exited"),
                                              (None, "its container is gone")])
async def test_a_database_that_is_down_refuses_the_roll_before_anything_changes(
        answer: tuple[bool, str] | None, said: str, monkeypatch: pytest.MonkeyPatch) -> None:
    world = _with_database(World())
    monkeypatch.setattr(world.runtime, "postgres_ready", _Down(answer))
    monkeypatch.setattr("sandbox.rollout.rehearsal.poll", _once)
    with pytest.raises(DatabaseDown, match=rf"^the fleet's PostgreSQL server is down \({said}\): start it again "
                                           r"\(docker start p-postgres\) or `sandbox down --project p` and `up` "
                                           r"again; nothing was changed$"):
        await world.rehearse(settings(hooks=("pre-rollout=exit 0",)))
    assert world.runtime.log == [] and world.attached_versions() == {"v1"}


async def _once(check: Any, **_: Any) -> Any:
    return await check()


@pytest.mark.asyncio
async def test_a_fleet_without_a_database_is_not_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World()
    probe = _Down((False, "down"))
    monkeypatch.setattr(world.runtime, "postgres_ready", probe)
    assert (await world.rehearse(settings())).exit_code == 0 and probe.probes == 0


# -- in every output ---------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_hook_runs_are_in_the_summary_the_markdown_and_junit() -> None:
    world = World()
    result = await world.rehearse(settings(hooks=("post-batch=echo checked $SANDBOX_BATCH",
                                                  "post-rollout=echo smoke broke >&2; exit 3")))
    report = Report.from_json(result.report)
    text = summary_text(report)
    assert "hooks            run on the host (--hook EVENT=CMD)" in text
    assert "  hook_post_batch_b1: PASS exit 0 in" in text
    assert "  hook_post_rollout: FAIL exit 3 in" in text and "    smoke broke" in text
    assert "mixed checks" not in text  # hooks are not mixed checks
    page = markdown_page(report)
    assert "## Hooks" in page and "## Mixed checks" not in page
    assert "| hook_post_rollout | FAIL | exit 3 | must exit 0 |" in page  # the verdict's row
    row = next(line for line in page.splitlines() if line.startswith("| hook_post_rollout | post-rollout |"))
    assert "| failed |" in row and "| 3 |" in row  # the hooks table's
    assert "hook_post_batch_b2 stdout (tail):" in page
    suite = ET.fromstring(junit_xml(report)).find("testsuite")
    assert suite is not None
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["hook_post_batch_b3"].findtext("system-out") == "checked 3\n"
    assert cases["hook_post_rollout"].find("failure") is not None
    assert cases["hook_post_rollout"].findtext("system-err") == "smoke broke\n"


@pytest.mark.asyncio
@pytest.mark.parametrize("strategy", strategies.NAMES)
async def test_post_batch_runs_once_after_each_batch_of_every_strategy(strategy: str, tmp_path: Path) -> None:
    world, out = World(n=4), tmp_path / "env"
    extra: dict[str, Any] = {"strategy": strategy, "batch": 2 if strategy == "rolling" else 1}
    prepared = await Rehearsal(settings(**extra), runtime=world.runtime, progress=Progress(world.stream),
                               deps=world.deps, install_sigint=False).prepare()
    result = await World(n=4).rehearse(settings(hooks=(f"post-batch={_writer(out)}",), **extra))
    assert result.report["outcome"] == "completed", result.message
    batches = sorted({s.batch_no for s in prepared.steps})
    assert [int(e["SANDBOX_BATCH"]) for e in _lines(out)] == batches


@pytest.mark.asyncio
async def test_sandbox_abort_runs_the_on_rollback_hook_as_the_rollback_starts(tmp_path: Path) -> None:
    world, out = World(), tmp_path / "env"

    async def abort(world: World) -> None:
        await _paused(world)
        assert (await steer.send("p", "abort"))["state"] == "aborting"

    result = await _rolling(world, settings(pause_after_batch=1, hooks=(f"on-rollback={_writer(out)}",
                                                                        f"post-batch={_writer(out)}")), abort)
    assert result.report["outcome"] == "rolled_back" and world.attached_versions() == {"v1"}
    assert [(e["SANDBOX_EVENT"], e["SANDBOX_BATCH"]) for e in _lines(out)] == [("post-batch", "1"),
                                                                              ("on-rollback", "0")]
    records = {r["name"]: r["status"] for r in result.report["mixed_checks"] if r.get("event")}
    assert records == {"hook_post_batch_b1": "passed", "hook_on_rollback": "passed"}
    phases = [e["phase"] for e in result.report["steps"]]
    assert phases.index("abort") < phases.index("rollback-start") < phases.index("hook", phases.index("abort"))
