"""The CLI rejects bad input with one line and exit code 2, before Docker is touched."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from sandbox.cli import build_parser, main, setting_flags, settings_from_args
from sandbox.commands import parse_strategy_spec
from sandbox.config import SETTINGS, Settings
from sandbox.errors import UsageError
from sandbox.fleet import versions
from tests.conftest import free_port


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["up", "--size", "0"], "sandbox: error: --size: 0 must be between 1 and 64"),
    (["up", "--port", "0"], "--port: 0 must be between 1 and 65535"),
    (["up", "--project", "no_underscores"], "--project: 'no_underscores' must be"),
    (["up", "--size", "three"], "'three' is not an integer"),
    (["up", "--env", "NOEQUALS"], "--env: 'NOEQUALS' must look like KEY=VALUE"),
    (["up", "--image", "green"], "--image: 'green' must look like NAME=IMAGE"),
    (["up", "--app-port", "0"], "--app-port: 0 must be between 1 and 65535"),
    (["up", "--command", "run 'unclosed"], "--command: No closing quotation"),
    (["up", "--version", "v3"], "--version: unknown version 'v3'"),
    (["roll", "--strategy", "yolo"], "invalid choice: 'yolo'"),
    (["roll", "--batch", "0"], "--batch: 0 must be 1 or more"),
    (["roll", "--mode", "in-place", "--strategy", "blue-green"], "--mode: in-place cannot be used with blue-green"),
    (["roll", "--set-env", "NOEQUALS"], "--set-env: 'NOEQUALS' must look like KEY=VALUE"),
    (["roll", "--detach-lag", "-1"], "--detach-lag: -1.0 must be in [0, 600] seconds"),
    (["roll", "--detach-lag", "2", "--mode", "in-place"], "--detach-lag: applies to --mode replace only"),
    (["demo", "--detach-lag", "2", "--strategy", "naive"],
     "--detach-lag: does not apply to naive, which kills servers before it detaches them"),
    (["compare", "--detach-lag", "2"], "unrecognized arguments: --detach-lag"),
    (["roll", "--max-error-ratio", "2"], "--max-error-ratio: 2.0 must be in [0, 1]"),
    (["roll", "--locustfile", "/nonexistent/locustfile.py"], "--locustfile: /nonexistent/locustfile.py is not a file"),
    (["roll", "--path", "get"], "--path: 'get' must start with /"),
    (["roll", "--think-ms", "200-50"], "--think-ms: '200-50' must be 0 <= MIN <= MAX"),
    (["roll", "--think-ms", "slow"], "--think-ms: 'slow' must be milliseconds"),
    (["roll", "--load-workers", "17"], "--load-workers: 17 must be between 1 and 16"),
    (["roll", "--client-timeout", "0"], "--client-timeout: 0.0 must be in (0, 600] seconds"),
    (["roll", "--warmup", "601"], "--warmup: 601.0 must be in [0, 600] seconds"),
    (["frobnicate"], "invalid choice"),
    (["up", "--lb-apply", "hot"], "invalid choice: 'hot'"),
    (["roll", "--max-stall-s", "-1"], "--max-stall-s: -1.0 must be in (0, 3600] seconds"),
    (["roll", "--max-stall-s", "12"], "--client-timeout: 10.0 must be larger than --max-stall-s (12.0)"),
    (["roll", "--slow-ms", "0"], "--slow-ms: 0.0 must be in (0, 3600000] ms"),
    (["roll", "--max-slow", "-1"], "--max-slow: -1 must be 0 or more"),
    (["roll", "--max-p99-ratio", "0.5"], "--max-p99-ratio: 0.5 must be in [1, 1000]"),
    (["roll", "--max-p99-ratio", "nan"], "--max-p99-ratio: nan must be in [1, 1000]"),
    (["roll", "--max-p99-ratio", "inf"], "--max-p99-ratio: inf must be in [1, 1000]"),
    (["roll", "--max-p99-ms", "0"], "--max-p99-ms: 0.0 must be in (0, 600000] ms"),
    (["roll", "--max-p99-ms", "inf"], "--max-p99-ms: inf must be in (0, 600000] ms"),
    (["roll", "--warmup", "0"], "--warmup: 0 with the load on leaves the p99 check no baseline"),
    (["roll", "--min-latency-samples", "0"], "--min-latency-samples: 0 must be 1 or more"),
    (["roll", "--max-violations", "-2"], "--max-violations: -2 must be 0 or more"),
    (["rollback", "--min-requests", "-1"], "--min-requests: -1 must be 0 or more"),
    (["demo", "--min-requests", "x"], "'x' is not an integer"),
    (["demo", "--size", "2", "--strategy", "rolling", "--batch", "2"],
     "--batch: 2 must be smaller than the fleet (2 servers) for rolling"),
    (["compare", "--size", "3", "--strategies", "one-at-a-time,rolling:5"],
     "batch: 5 must be smaller than the fleet (3 servers) for rolling"),
    (["compare", "--strategies", ","], "strategies: name at least one strategy"),
    (["compare", "--strategies", "naive"], "strategies: naive alone judges nothing (a baseline that drops by design)"),
    (["roll", "--max-stall-s", "0"], "--max-stall-s: 0.0 must be in (0, 3600] seconds"),
    (["roll", "--min-requests", "0"], "--min-requests: 0 with the load on would pass a run that measured nothing"),
    (["roll", "--dashboard-port", "0"], "sandbox: error: --dashboard-port: 0 must be between 1 and 65535"),
    (["demo", "--dashboard", "--dashboard-port", "70000"], "--dashboard-port: 70000 must be between 1 and 65535"),
])
def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    code, err = run(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err


def test_breaking_v2_mode_sets_the_app_flag_for_the_new_version() -> None:
    args = build_parser().parse_args(["roll", "--v2-mode", "breaking", "--set-env", "A=1"])
    settings = settings_from_args(args)
    assert (settings.v2_mode, dict(settings.set_env)) == ("breaking", {"A": "1"})  # the flag's own, as typed
    assert versions.target_env(settings.set_env, settings.v2_mode) == {"APP_BREAKING": "1", "A": "1"}
    assert versions.target_env({"APP_BREAKING": "0"}, "breaking") == {"APP_BREAKING": "0"}  # --set-env wins
    assert versions.target_env({"A": "1"}, "compatible") == {"A": "1"}


@pytest.mark.parametrize("spec, expected", [
    ("one-at-a-time", ("one-at-a-time", 1)), ("rolling:3", ("rolling", 3)), ("rolling", ("rolling", 2)),
    ("double-half", ("double-half", 1)), ("surge:4", ("surge", 4)),
])
def test_strategy_specs(spec: str, expected: tuple[str, int]) -> None:
    assert parse_strategy_spec(spec, default_batch=2) == expected


@pytest.mark.parametrize("spec", ["yolo", "rolling:0", "rolling:x", "rolling:-1"])
def test_bad_strategy_specs(spec: str) -> None:
    with pytest.raises(UsageError, match=r"^strategies: "):
        parse_strategy_spec(spec)


def test_compare_rejects_a_bad_strategy_list_before_docker(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "compare", "--strategies", "rolling:3,warp-speed")
    assert code == 2 and "strategies: 'warp-speed'" in err


def test_every_command_has_one_handler() -> None:
    from sandbox.cli import COMMANDS, ENGINE_COMMANDS

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert not set(COMMANDS) & set(ENGINE_COMMANDS)
    assert set(COMMANDS) | set(ENGINE_COMMANDS) == set(sub.choices)  # type: ignore[arg-type]


@pytest.mark.parametrize("argv, project, report", [
    (["demo"], "sandbox-demo", "reports/demo"),
    (["demo", "--project", "mine", "--report", "out"], "mine", "out"),
    (["compare"], "sandbox", "reports/compare"),
    (["roll"], "sandbox", None),
])
def test_defaults_per_command(argv: list[str], project: str, report: str | None,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from sandbox import cli

    ports: list[int] = []
    monkeypatch.setattr(cli, "check_port_free", ports.append)  # no socket: the port is not the point here
    monkeypatch.delenv("SANDBOX_PROJECT", raising=False)
    args = build_parser().parse_args(argv)
    assert cli.checked_settings(args).project == project
    assert ports == ([] if argv[0] == "roll" else [8080])
    assert args.report == (Path(report) if report else None)


@pytest.mark.parametrize("flag, value", [("--max-dropped", "0"), ("--users", "7")])
def test_integer_flags_parse_whole_numbers_and_leave_the_range_to_the_settings(flag: str, value: str) -> None:
    args = build_parser().parse_args(["roll", flag, value])
    assert getattr(args, flag[2:].replace("-", "_")) == int(value)


@pytest.mark.parametrize("argv, lb_apply, keepalive", [
    (["up"], "dynamic", True),
    (["up", "--lb-apply", "reload"], "reload", True),
    (["up", "--lb-apply", "reload", "--no-client-keepalive"], "reload", False),
    (["demo", "--no-client-keepalive", "--client-keepalive"], "dynamic", True),
    (["compare", "--lb-apply", "reload"], "reload", True),
])
def test_lb_flags(argv: list[str], lb_apply: str, keepalive: bool) -> None:
    settings = settings_from_args(build_parser().parse_args(argv))
    assert (settings.lb_apply, settings.client_keepalive) == (lb_apply, keepalive)
def test_verdict_flags_reach_the_settings() -> None:
    args = build_parser().parse_args(["roll", "--max-stall-s", "2.5", "--slow-ms", "500", "--max-slow", "3",
                                      "--max-p99-ratio", "4", "--max-violations", "1", "--min-requests", "50",
                                      "--max-p99-ms", "400", "--min-latency-samples", "30"])
    s = settings_from_args(args)
    assert (s.max_stall_s, s.slow_ms, s.max_slow, s.max_p99_ratio, s.max_violations, s.min_requests) == (
        2.5, 500.0, 3, 4.0, 1, 50)
    assert (s.max_p99_ms, s.min_latency_samples) == (400.0, 30)
    assert settings_from_args(build_parser().parse_args(["roll", "--warmup", "0", "--no-load"])).warmup_s == 0


def test_each_command_offers_its_settings_flags_with_their_help() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    offered: set[str] = set()
    for command, parser in sub.choices.items():  # type: ignore[union-attr]
        text = " ".join(parser.format_help().split())
        for name in setting_flags(command):
            offered.add(name)
            for one in SETTINGS[name].flags:
                assert one in text, (command, one)
            assert " ".join(SETTINGS[name].spec.help.split()) in text, (command, name)
    assert offered == {name for name, one in SETTINGS.items() if one.flags}  # every flag has a command


def test_setting_flags_per_command() -> None:
    assert set(setting_flags("status")) == set(setting_flags("down")) == {"project", "engine"}
    assert {"to_version", "max_error_ratio", "auto_rollback", "set_env"} <= set(setting_flags("roll"))
    assert not {"to_version", "max_error_ratio", "auto_rollback", "set_env"} & set(setting_flags("rollback"))
    assert setting_flags("up")["app_env"] == "--env" and "app_env" not in setting_flags("demo")
    assert "update_delay" in setting_flags("compare") and "update_delay" not in setting_flags("roll")


def test_an_environment_value_is_named_by_its_variable(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_SIZE", "0")
    code, err = run(capsys, "up")
    assert code == 2 and err.strip() == "sandbox: error: SANDBOX_SIZE: 0 must be between 1 and 64"
    code, err = run(capsys, "up", "--size", "65")  # the flag wins, and is named
    assert code == 2 and err.strip() == "sandbox: error: --size: 65 must be between 1 and 64"


def test_demo_and_compare_start_nine_servers_unless_told() -> None:
    for command in ("demo", "compare"):
        assert settings_from_args(build_parser().parse_args([command])).size == 9
        assert settings_from_args(build_parser().parse_args([command, "--size", "4"])).size == 4
    assert settings_from_args(build_parser().parse_args(["up"])).size == 3


@pytest.mark.parametrize("command, project", [("demo", "sandbox-demo"), ("roll", "sandbox"), ("up", "sandbox")])
def test_help_names_the_default_project_the_command_uses(command: str, project: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    assert f"(default: {project})" in " ".join(capsys.readouterr().out.split())


def test_a_report_that_cannot_be_written_is_one_line_and_the_summary_still_prints(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sandbox import cli
    from sandbox.rollout.rehearsal import RolloutResult
    report = {"strategy": "one-at-a-time", "outcome": "completed", "load": False, "from_version": "v1",
              "to_version": "v2", "verdict": {"pass": True, "checks": [
                  {"name": "outcome", "pass": True, "value": "completed", "limit": "completed", "kind": "equals"}]}}
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    args = argparse.Namespace(json=False, junit=blocker / "rollout.xml")
    result = RolloutResult(report=report, exit_code=0, message="", write_error="could not write the report files to "
                           "out: No space left on device")
    code = cli._print_rollout(args, Settings(), result)
    out, err = capsys.readouterr()
    assert code == 1  # a CI must not read a missing report as a pass
    assert out.splitlines()[-1] == "PASS: all 1 checks held"
    assert err.splitlines() == ["rolling-sandbox: could not write the report files to out: No space left on device",
                                f"rolling-sandbox: could not write {blocker}: File exists"]


@pytest.mark.parametrize("args, needle", [
    (["--size", "0"], "size"),
    (["--size", "2", "--port", "70000"], "port"),
    (["--size", "2", "--project", "bad_name!"], "project"),
    (["--size", "two"], "size"),
    (["--size", "2", "--port", "TAKEN"], "is already in use"),
])
def test_up_refuses_bad_input_before_any_engine_call(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     args: list[str], needle: str) -> None:
    """`up` with bad input (a taken port among it) exits 2 with one line, and cannot have created anything:
    the engine it would reach listens nowhere, so any call to it would fail otherwise."""
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{free_port()}")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = str(holder.getsockname()[1])
        argv = ["up", *(taken if a == "TAKEN" else a for a in args)]
        if "--port" not in args:
            argv += ["--port", str(free_port())]
        code, err = run(capsys, *argv)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err, err
    if "TAKEN" in args:
        assert f"127.0.0.1:{taken} is already in use" in err
