"""The ``sandbox`` command: parse flags, build Settings, call ``sandbox.commands``, print.

Each command declares the setting groups it takes (``_SUBCOMMANDS``); their flags, types and help
come from the settings' definitions in :mod:`sandbox.config`, under a heading per group.

Exit codes: 0 success, 2 bad input (nothing was touched), 1 anything else
(a rollout whose verdict fails, ``compare`` where a strategy other than naive
fails its verdict, an engine error), 130 interrupted. Expected errors print one line, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from sandbox import __version__, commands
from sandbox.commands import parse_strategy_spec
from sandbox.config import GROUPS, SETTINGS, Group, Settings, check_batch, check_port_free, load_settings, renamed
from sandbox.doctor import output as doctor_output
from sandbox.doctor.measure import LongLivedKind
from sandbox.doctor.run import DOCKER_ONLY, check_long_path
from sandbox.doctor.run import doctor as run_doctor
from sandbox.errors import DEFAULT_PROJECT, EXIT_FAILURE, EXIT_USAGE, SandboxError, UsageError, exit_code_for, hint
from sandbox.fleet import cluster, engines
from sandbox.fleet.engine import Engine
from sandbox.fleet.images import db_image_ref
from sandbox.fleet.loadbalancer import ROUTE_COOKIE, ROUTE_HEADER
from sandbox.results.junit import write_compare_junit, write_junit
from sandbox.results.model import Report
from sandbox.results.text import compare_text, summary_text
from sandbox.rollout import steer
from sandbox.rollout import strategies as registry
from sandbox.rollout.rehearsal import RolloutResult, unchanged_text
from sandbox.ui.dashboard import LiveView

log = logging.getLogger("sandbox")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"sandbox: error: {message} (see `sandbox {self.prog.split()[-1]} --help`)\n"
                  if " " in self.prog else f"sandbox: error: {message}\n")


class _Formatter(argparse.HelpFormatter):
    """argparse's help, never wrapped inside a hyphenated word (``post-batch``, ``--max-stall-s``)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def _integer(text: str) -> int:
    """A whole number; its range is checked with the setting it fills (``config.validate``)."""
    try:
        return int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exc


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc


# a flag's text as its setting's kind; str (and a Literal's) as given
_CONVERT: dict[type, Callable[[str], Any]] = {bool: _boolean, int: _integer, float: _number, Path: Path}
DEMO_PROJECT = "sandbox-demo"  # demo's own default, so it never touches the fleet of `sandbox up`
_COMMON = ("project", "engine")  # every command's setting flags
# compare runs its fleets unattended
_STEER_ONLY = ("pause_after_batch", "pause_at_mixed", "pause_timeout", "on_pause_timeout")
STEER_COMMANDS = {"pause": "pause the running rollout between two steps (traffic keeps flowing)",
                  "resume": "resume a paused rollout",
                  "abort": "abort the running rollout: roll back, as a failed rollout does",
                  "promote": "skip the running rollout's remaining pauses (and resume it)"}
_MIGRATE = ("migrate", "migrate_at", "migrate_timeout_s", "contract", "rollback_rehearsal_s")  # roll and compare
_ROLL_ONLY = ("to_version", "max_error_ratio", "auto_rollback", "set_env", *_MIGRATE)
_HOOKS = ("hooks", "hook_timeout_s")  # roll and demo run them; rollback and compare take none


def setting_flags(command: str) -> dict[str, str]:
    """The settings ``command`` takes as flags, each with its flag, in definition order."""
    takes = _SUBCOMMANDS[command]
    return {s.name: s.flags[0] for s in SETTINGS.values()
            if s.flags and ((s.name in _COMMON and s.name not in takes.without) or s.name in takes.also
                            or (s.spec.group in takes.groups and s.name not in takes.without))}


def _add_settings(p: argparse.ArgumentParser, flags: Mapping[str, str], project: str) -> None:
    """A flag for each setting in ``flags`` (name: its first flag), under a heading per group, from the
    settings' definitions; ``project`` is the command's default project, which ``--project``'s help names."""
    sections = {group: p.add_argument_group(f"{group} settings") for group in GROUPS
                if any(SETTINGS[name].spec.group == group for name in flags)}
    for name, flag in flags.items():
        one = SETTINGS[name]
        spec, section = one.spec, sections[one.spec.group]
        if name == "project":
            spec = replace(spec, help=f"{spec.help} (default: {project})")
        if one.kind is bool and spec.metavar is None:
            if spec.flag:
                section.add_argument(spec.flag, dest=name, action="store_true", default=None, help=spec.help)
            if spec.off_flag:
                section.add_argument(spec.off_flag, dest=name, action="store_false", default=None,
                                     help=spec.off_help or spec.help)
        elif one.kind in (tuple, dict):
            section.add_argument(flag, dest=name, action="append", metavar=spec.metavar, help=spec.help)
        else:
            section.add_argument(flag, dest=name, type=_CONVERT.get(one.kind, str), choices=one.choices or None,
                                 metavar=spec.metavar, help=spec.help)


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--config", type=Path, help="a sandbox.toml (default: ./sandbox.toml if present)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    parser = _Parser(prog="sandbox", description="Rehearse rolling deployments on a local Docker fleet.")
    parser.add_argument("--version", action="version", version=f"rolling-sandbox {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, command in _SUBCOMMANDS.items():
        p = sub.add_parser(name, parents=[common], help=command.help, formatter_class=_Formatter)
        if command.own_flags is not None:
            command.own_flags(p)
        _add_settings(p, setting_flags(name), command.project)
        p.set_defaults(**command.defaults)
    return parser


def _add_status_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _add_cluster_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("up", "down", "status"),
                   help="up: start the workers and join them; down: remove them (and the swarm up made); "
                        "status: the nodes")
    p.add_argument("--nodes", type=_integer, default=3, metavar="N",
                   help="nodes in the swarm, the local engine (the manager) included: N-1 workers (default: 3)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _add_images_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="rebuild every image, the base included")
    p.add_argument("--prune", action="store_true",
                   help="then remove older rolling-sandbox images that no container uses")


def _add_report_flags(p: argparse.ArgumentParser) -> None:
    """How every command that rolls under load reports."""
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--junit", type=Path, metavar="FILE",
                   help="write the verdict as JUnit XML, one test case per check "
                        "(compare: one test suite per strategy)")
    p.add_argument("--report", type=Path, metavar="DIR",
                   help="write report.json, chart.png, report.md here (demo: reports/demo, "
                        "compare: reports/compare)")


def _add_dashboard_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dashboard", action="store_true", help="serve a live page of the rollout on 127.0.0.1")
    p.add_argument("--dashboard-port", type=_integer, default=8089, help="its port (default 8089)")


def _add_roll_flags(p: argparse.ArgumentParser) -> None:
    _add_report_flags(p)
    _add_dashboard_flags(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (batches, steps, peak containers, capacity) and touch nothing")


def _add_demo_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep", action="store_true", help="leave the fleet running afterwards")
    _add_report_flags(p)
    _add_dashboard_flags(p)
    p.add_argument("--narrate", action="store_true",
                   help="pause at each step of the first batch and say what it does and why")
    p.set_defaults(report=Path("reports") / "demo")


def _add_compare_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategies", default="one-at-a-time,rolling:3,double-half,blue-green,naive",
                   help="comma-separated, NAME or NAME:BATCH (default one-at-a-time,rolling:3,double-half,"
                        "blue-green,naive)")
    p.add_argument("--replace", action="store_true", help="remove existing fleets named PROJECT-N first "
                                                          "(default: refuse them, exit 2)")
    _add_report_flags(p)
    _add_dashboard_flags(p)
    p.set_defaults(report=Path("reports") / "compare")


def _add_doctor_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ws-path", metavar="PATH", help="a WebSocket path of your app: does a stop close it properly?")
    p.add_argument("--sse-path", metavar="PATH", help="a server-sent events path of your app: does a stop end it?")
    p.add_argument("--json", action="store_true", help="print the findings, measurements and snippets as JSON")
    p.add_argument("--report", type=Path, metavar="DIR",
                   help="write doctor.md (with the evidence) and doctor.json here")
    p.add_argument("--junit", type=Path, metavar="FILE", help="write the findings as JUnit XML, one test case each")


@dataclass(frozen=True)
class _Command:
    """A command's help line; the setting groups it takes as flags, less ``without``, plus the
    settings ``also``; its own flags that are not settings; and its own defaults of settings (its
    flag's, over environment and file)."""

    help: str
    groups: tuple[Group, ...] = ()
    without: tuple[str, ...] = ()
    also: tuple[str, ...] = ()
    own_flags: Callable[[argparse.ArgumentParser], None] | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    project: str = DEFAULT_PROJECT  # when neither flag, environment nor file names one


_SUBCOMMANDS: dict[str, _Command] = {
    "up": _Command("start N servers behind NGINX on 127.0.0.1", ("fleet", "app")),
    "status": _Command("show the fleet and the load balancer", own_flags=_add_status_flags),
    "down": _Command("remove this project's containers and network"),
    "images": _Command("build the images that are missing", own_flags=_add_images_flags),
    "cluster": _Command("a multi-node swarm on this machine: worker nodes are engines in containers",
                        without=_COMMON, own_flags=_add_cluster_flags),
    "roll": _Command("roll the fleet to another version under live traffic", ("rollout", "load", "limits"),
                     own_flags=_add_roll_flags),
    "rollback": _Command("return to the version before the last roll", ("rollout", "load", "limits"),
                         without=(*_ROLL_ONLY, *_HOOKS), own_flags=_add_report_flags),
    "demo": _Command("workshop demo: up 9, roll to v2 under load, report, down",
                     ("fleet", "app", "rollout", "load", "limits"),
                     without=("lb_retry", "version", "app_env", "mode", *_ROLL_ONLY),
                     own_flags=_add_demo_flags, defaults={"size": 9}, project=DEMO_PROJECT),
    "compare": _Command("run several strategies on fresh fleets under the same load; one table",
                        ("fleet", "swarm", "rollout", "load", "limits"),
                        without=("lb_retry", "strategy", "batch", "mode", "detach_lag_s",
                                 *(name for name in _ROLL_ONLY if name not in _MIGRATE),
                                 *_STEER_ONLY, *_HOOKS),
                        own_flags=_add_compare_flags, defaults={"size": 9}),
    "doctor": _Command("run short real experiments on your image: what loses requests in rollouts, what to set",
                       ("app",), also=("size", "ready_timeout", "paths", "users", "think_ms", "locustfile"),
                       own_flags=_add_doctor_flags),
    **{name: _Command(text, own_flags=_add_status_flags) for name, text in STEER_COMMANDS.items()},
}


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from flags over environment over sandbox.toml over defaults (UsageError if bad)."""
    flags = setting_flags(args.command)
    overrides = {name: getattr(args, name) for name in flags}
    return load_settings(overrides, config_path=args.config, flags=flags)


def _print_status(data: dict[str, Any]) -> None:
    lb = data["lb"]
    print(f"project {data['project']}: load balancer {lb['url']} ({lb['state']}, lb-apply {lb.get('lb_apply')}), "
          f"{len(lb['upstreams'])} attached")
    if running := data.get("steering"):
        print(f"rollout {running['state']}: {running['message']}")
    serving = sorted({i["version"] for i in data["instances"] if i["attached"]})
    if len(serving) > 1:  # mixed: say how to reach each version on purpose (header routing)
        print(f"{' and '.join(serving)} attached: reach one with "
              f"curl -H '{ROUTE_HEADER}: {serving[0]}' {lb['url']}/ (or cookie {ROUTE_COOKIE}={serving[0]})")
    for name, service in (data.get("services") or {}).items():
        print(f"  {name}: {service['address']} (database {service['database']}), DATABASE_URL of every server")
    for service in data.get("stopped") or []:
        print(f"  {service['name']:<28} {service['role']:<8} {service['state']}")
    for inst in data["instances"]:
        mark = "attached" if inst["attached"] else "detached"
        node = f"  on {inst['node']}" if inst.get("node") else ""
        print(f"  {inst['name']:<28} slot {inst['slot']:<3} {inst['version']}  {inst['state']:<8} "
              f"{inst['address'] or '-':<22} {mark}{node}")
    stopped = (lb["state"] != "running") + len(data.get("stopped") or []) + sum(
        i["state"] == "exited" for i in data["instances"])
    if stopped:
        print(f"{stopped} container(s) of the fleet are stopped (an engine restart stops them all): "
              f"{hint('roll', data['project'])} or {hint('rollback', data['project'])} starts them again first")


Say = Callable[[str], None]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def checked_settings(args: argparse.Namespace) -> Settings:
    """The settings of this command line; every bad value raises UsageError here, before Docker is touched."""
    settings = settings_from_args(args)
    project = _SUBCOMMANDS[args.command].project
    if args.project is None and settings.project == DEFAULT_PROJECT != project:
        settings = replace(settings, project=project)
    try:
        _check_command(args, settings)
    except UsageError as exc:
        raise renamed(exc, settings.origin) from None
    return settings


def _check_command(args: argparse.Namespace, settings: Settings) -> None:
    """What only the command line can check: strategies, batches against the fleet's size, ports."""
    specs = _specs(args)
    for spec in specs:
        name, batch = parse_strategy_spec(spec, settings.batch)
        check_batch(name, batch, settings.size)
        if name == "swarm-native" and settings.engine != "swarm":
            raise UsageError(f"strategies: {spec.strip()!r} needs --engine swarm")
        if name == "swarm-native" and (settings.images or settings.builds):
            raise UsageError(f"strategies: {spec.strip()!r} rehearses the toy app only; drop it or --image/--build")
    if args.command == "compare" and not specs:
        raise UsageError("strategies: name at least one strategy")
    if specs and not any(registry.of(parse_strategy_spec(s, settings.batch)[0]).judged_in_compare for s in specs):
        raise UsageError(f"strategies: {', '.join(s.strip() for s in specs)} alone judges nothing (a baseline that "
                         "drops by design); add a strategy compare judges, e.g. one-at-a-time")
    if args.command == "demo":
        check_batch(settings.strategy, settings.batch, settings.size)
    if args.command == "doctor":
        if settings.engine != "docker":
            raise UsageError(DOCKER_ONLY)
        check_long_path("--ws-path", args.ws_path)
        check_long_path("--sse-path", args.sse_path)
    if hasattr(args, "dashboard_port"):
        SETTINGS["port"].check_bounds(args.dashboard_port, "--dashboard-port")  # a port, as --port
    if args.command in ("up", "demo", "compare"):
        check_port_free(settings.port)


def _specs(args: argparse.Namespace) -> list[str]:
    return [s for s in args.strategies.split(",") if s.strip()] if args.command == "compare" else []


async def _images(args: argparse.Namespace, settings: Settings, runtime: Engine, say: Say, view: LiveView) -> int:
    image_set = await commands.images(runtime=runtime, force=args.force, prune=args.prune, say=say)
    for ref in (image_set.base, image_set.lb, *image_set.app.values(), db_image_ref()):
        print(ref)
    return 0


async def _up(args: argparse.Namespace, settings: Settings, runtime: Engine, say: Say, view: LiveView) -> int:
    _print_status(await commands.up(settings, runtime=runtime, say=say))
    return 0


async def _status(args: argparse.Namespace, settings: Settings, runtime: Engine, say: Say, view: LiveView) -> int:
    data = await commands.status(settings, runtime=runtime)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        _print_status(data)
    return 0


async def _down(args: argparse.Namespace, settings: Settings, runtime: Engine, say: Say, view: LiveView) -> int:
    removed = await commands.down(settings, runtime=runtime)
    services = f"{removed['services']} services, " if "services" in removed else ""
    print(f"removed {services}{removed['containers']} containers, {removed['volumes']} volumes, "
          f"{removed['networks']} networks of project {settings.project}")
    return 0


async def _roll(args: argparse.Namespace, settings: Settings, runtime: Engine, say: Say, view: LiveView) -> int:
    if getattr(args, "dry_run", False):
        prepared = await commands.plan_only(settings, runtime=runtime, kind=args.command)
        print(json.dumps(prepared.as_json(), indent=2) if args.json else prepared.describe())
        return 0
    result = await commands.roll(settings, runtime=runtime, kind=args.command, report_dir=args.report,
                                 progress=view.progress(settings, sized=False))
    code = _print_rollout(args, settings, result)
    await view.close(report=Report.from_json(result.report))
    return code


async def _demo(args: argparse.Namespace, settings: Settings, runtime: Engine, say: Say, view: LiveView) -> int:
    started = time.monotonic()
    result = await commands.demo(settings, runtime=runtime, keep=args.keep, report_dir=args.report, say=say,
                                 progress=view.progress(settings))
    code = _print_rollout(args, settings, result)
    say(f"report: {args.report / 'report.md'} (chart: {args.report / 'chart.png'})")
    say(f"demo took {time.monotonic() - started:.0f} s")
    await view.close(report=Report.from_json(result.report))
    return code


async def _compare(args: argparse.Namespace, settings: Settings, runtime: Engine, say: Say, view: LiveView) -> int:
    compared = await commands.compare(settings, runtime=runtime, strategies=_specs(args), report_dir=args.report,
                                      say=say, progress_for=view.progress, replace=args.replace)
    print(json.dumps(compared.table, indent=2, default=str) if args.json else compare_text(compared.reports))
    code = compared.exit_code
    if args.junit is not None:
        code = _written(lambda: write_compare_junit(compared.reports, args.junit), code)
    await view.close(table=compared.table["rows"])
    return code


def _print_rollout(args: argparse.Namespace, settings: Settings, result: RolloutResult) -> int:
    """Print the summary, write the JUnit file; the exit code (1 when a report file could not be
    written: a CI must not read a missing report as a pass)."""
    report = Report.from_json(result.report)
    if args.json:
        print(json.dumps(result.report, indent=2, default=str))
    else:
        print(summary_text(report) if result.rehearsed else unchanged_text(result.report))
    if result.message:
        print(result.message, file=sys.stderr)
    code: int = result.exit_code
    if result.write_error:
        print(f"rolling-sandbox: {result.write_error}", file=sys.stderr)
        code = code or EXIT_FAILURE
    if getattr(args, "junit", None) is not None:
        code = _written(lambda: write_junit(report, args.junit), code)
    return code


def _written(write: Callable[[], Path], code: int) -> int:
    """Run ``write``; on OSError (a full disk) say so in one line and make an exit 0 a 1."""
    try:
        write()
    except OSError as exc:
        print(f"rolling-sandbox: could not write {exc.filename or 'the JUnit file'}: {exc.strerror or exc}",
              file=sys.stderr)
        return code or EXIT_FAILURE
    return code


async def _doctor(args: argparse.Namespace, settings: Settings, runtime: Engine, say: Say, view: LiveView) -> int:
    started = time.monotonic()
    long_paths: list[tuple[LongLivedKind, str]] = [("ws", args.ws_path)] if args.ws_path else []
    long_paths += [("sse", args.sse_path)] if args.sse_path else []
    diagnosis = await run_doctor(settings, runtime=runtime, long_paths=long_paths, say=say)
    print(json.dumps(diagnosis.as_json(), indent=2) if args.json else doctor_output.text(diagnosis))
    code = diagnosis.exit_code
    if args.report is not None:
        code = _written(lambda: doctor_output.write_report(diagnosis, args.report)[0], code)
        say(f"report: {args.report / 'doctor.md'}")
    if args.junit is not None:
        code = _written(lambda: doctor_output.write_junit(diagnosis, args.junit), code)
    say(f"doctor took {time.monotonic() - started:.0f} s")
    return code


async def _steer(args: argparse.Namespace, settings: Settings) -> int:
    """`sandbox pause|resume|abort|promote`: one line (or --json) with the state the command left."""
    answer = await steer.send(settings.project, args.command)
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(f"{settings.project}: {answer.get('state')}: {answer.get('message')}")
    return 0 if answer.get("ok") else EXIT_FAILURE


async def _steer_handler(args: argparse.Namespace, settings: Settings, runtime: Engine, say: Say,
                         view: LiveView) -> int:
    return await _steer(args, settings)


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings, Engine, Say, LiveView], Awaitable[int]]] = {
    "images": _images, "up": _up, "status": _status, "down": _down, "roll": _roll, "rollback": _roll,
    "demo": _demo, "compare": _compare, "doctor": _doctor, **dict.fromkeys(STEER_COMMANDS, _steer_handler),
}


async def _cluster(args: argparse.Namespace) -> int:
    """`sandbox cluster up|down|status`: the nodes (or what down removed), as text or --json."""
    if args.action == "down":
        removed = await cluster.down(say=_say)
        print(json.dumps(removed) if args.json else
              f"cluster removed: {removed['nodes']} worker(s), {removed['volumes']} volume(s), "
              f"{removed['networks']} network(s)")
        return 0
    nodes = await (cluster.up(args.nodes, say=_say) if args.action == "up" else cluster.status())
    if args.json:
        print(json.dumps([n.as_json() for n in nodes], indent=2))
    elif not nodes:
        print("no cluster: sandbox cluster up --nodes 3 starts one")
    else:
        for n in nodes:
            print(f"  {n.hostname:<24} {n.role:<8} {n.state:<10} {n.availability:<7} {n.address:<16} "
                  f"{n.tasks} task(s)")
    return 0


# commands on the engine itself, not on a fleet: no settings beyond their own flags
ENGINE_COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {"cluster": _cluster}


async def _run(args: argparse.Namespace) -> int:
    if args.command in ENGINE_COMMANDS:
        return await ENGINE_COMMANDS[args.command](args)
    settings = checked_settings(args)
    if args.command in STEER_COMMANDS:  # the controller's socket only: no engine to connect, no dashboard
        return await _steer(args, settings)
    # binds --dashboard-port (exit 2 when taken) before Docker is touched
    view = await LiveView.open(dashboard=getattr(args, "dashboard", False), port=getattr(args, "dashboard_port", None),
                               narrate=getattr(args, "narrate", False), say=_say)
    on_fleet = args.command in ("status", "roll", "rollback", "down")  # these use the fleet's own engine
    runtime = engines.connect(settings.engine, settings.project if on_fleet else None)
    return await COMMANDS[args.command](args, settings, runtime, _say, view)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(_run(args))
    except SandboxError as exc:
        print(f"sandbox: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        print("sandbox: interrupted", file=sys.stderr)
        return exit_code_for(KeyboardInterrupt())
    except Exception:  # a bug: show everything
        log.exception("unexpected error")
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
