"""The ``sandbox`` command: parse flags, build Settings, call ``sandbox.commands``, print.

Exit codes: 0 success, 2 bad input (nothing was touched), 1 anything else
(a rollout whose verdict fails, ``compare`` where a strategy other than naive
fails its verdict, an engine error), 130 interrupted. Expected errors print one line, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from sandbox import __version__, commands
from sandbox.commands import parse_strategy_spec
from sandbox.config import (
    DEFAULT_LOAD_WORKERS,
    ENGINES,
    FAILURE_ACTIONS,
    LB_APPLY_MODES,
    MODES,
    SESSION_STORES,
    STRATEGIES,
    V2_MODES,
    Settings,
    check_batch,
    check_port_free,
    load_settings,
    parse_env_pairs,
)
from sandbox.errors import EXIT_FAILURE, EXIT_USAGE, SandboxError, UsageError, exit_code_for
from sandbox.fleet import engines, versions
from sandbox.fleet.runtime import Runtime
from sandbox.results.junit import write_compare_junit, write_junit
from sandbox.results.report import compare_text, summary_text
from sandbox.ui.dashboard import LiveView

log = logging.getLogger("sandbox")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"sandbox: error: {message} (see `sandbox {self.prog.split()[-1]} --help`)\n"
                  if " " in self.prog else f"sandbox: error: {message}\n")


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


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--project", help="project name: letters, digits, dashes (default: sandbox)")
    common.add_argument("--config", type=Path, help="a sandbox.toml (default: ./sandbox.toml if present)")
    common.add_argument("--engine", choices=ENGINES,
                        help="docker: plain containers (default); swarm: Swarm services (see README); "
                             "status, roll, rollback, down use the engine the fleet was started with")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    parser = _Parser(prog="sandbox", description="Rehearse rolling deployments on a local Docker fleet.")
    parser.add_argument("--version", action="version", version=f"rolling-sandbox {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_fleet_commands(sub, common)
    _add_rollout_commands(sub, common)
    return parser


def _add_fleet_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """up, status, down, images."""
    p = sub.add_parser("up", parents=[common], help="start N servers behind NGINX on 127.0.0.1")
    p.add_argument("--size", type=_integer, help="number of app servers (default 3)")
    p.add_argument("--port", type=_integer, help="load balancer port on 127.0.0.1 (default 8080)")
    p.add_argument("--version", dest="version",
                   help="version to start: one of --image/--build names (default the first; v1 for the toy app)")
    _add_version_flags(p)
    p.add_argument("--sticky", action="store_true", default=None, help="route each user (cookie) to one server")
    p.add_argument("--sessions", choices=SESSION_STORES,
                   help="where carts live: memory (each server's own, lost with it; default) or shared (one Redis)")
    p.add_argument("--lb-retry", dest="lb_retry", action="store_true", default=None,
                   help="let NGINX retry a failed connection on another server (its default; hides drops)")
    _add_lb_flags(p)
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="app environment (repeatable)")

    p = sub.add_parser("status", parents=[common], help="show the fleet and the load balancer")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    sub.add_parser("down", parents=[common], help="remove this project's containers and network")

    p = sub.add_parser("images", parents=[common], help="build the images that are missing")
    p.add_argument("--force", action="store_true", help="rebuild every image, the base included")
    p.add_argument("--prune", action="store_true",
                   help="then remove older rolling-sandbox images that no container uses")


def _add_version_flags(p: argparse.ArgumentParser) -> None:
    """Your own images as named versions (up, demo)."""
    p.add_argument("--image", action="append", default=[], metavar="NAME=REF",
                   help="a version of your app: a name you pick and a local image (repeatable)")
    p.add_argument("--build", action="append", default=[], metavar="NAME=DIR",
                   help="a version built first from DIR's Dockerfile (repeatable)")
    p.add_argument("--app-port", type=_integer, help="the port your app listens on (default 8000)")
    p.add_argument("--health-path", help="ready when GET PATH answers 2xx (default: the image's HEALTHCHECK, "
                                         "else the port accepts a connection; the toy app: /healthz)")
    p.add_argument("--stop-signal", help="signal that asks your app to stop (default: the image's, SIGTERM)")
    p.add_argument("--stop-timeout", type=_number, help="seconds after it before SIGKILL (default 20)")
    p.add_argument("--command", dest="app_command", help="run this instead of the image's CMD (split like a shell)")
    p.add_argument("--memory", help="memory limit of each server (default 128m)")
    p.add_argument("--read-only", type=_boolean, metavar="true|false",
                   help="read-only root filesystem (default true; /tmp is always writable)")


def _add_load_flags(p: argparse.ArgumentParser) -> None:
    """The flags of every command that rolls under load."""
    p.add_argument("--users", type=_integer, help="simulated users (default 20)")
    p.add_argument("--spawn-rate", type=_number, help="users started per second (default 20)")
    p.add_argument("--locustfile", type=Path, help="your own locustfile instead of the default")
    p.add_argument("--path", dest="paths", action="append", default=None, metavar="PATH",
                   help="your own app without a locustfile: the default users GET these (repeatable, default /)")
    p.add_argument("--no-load", dest="load", action="store_false", default=None, help="no traffic")
    p.add_argument("--max-dropped", type=_integer, help="verdict: at most this many dropped (default 0)")
    p.add_argument("--max-stall-s", type=_number, help="verdict: longest stretch with no answer (default 1 s)")
    p.add_argument("--slow-ms", type=_number, help="a request slower than this is slow (default 2000)")
    p.add_argument("--max-slow", type=_integer, help="verdict: at most this many slow (default 0)")
    p.add_argument("--max-p99-ratio", type=_number,
                   help="verdict: rollout p99 at most this times the warmup's (default 3)")
    p.add_argument("--max-violations", type=_integer,
                   help="verdict: at most this many contract violations (default 0)")
    p.add_argument("--min-requests", type=_integer,
                   help="verdict: at least this many requests measured (default 100)")
    p.add_argument("--warmup", dest="warmup_s", type=_number, help="seconds of load before (default 3)")
    p.add_argument("--cooldown", dest="cooldown_s", type=_number, help="seconds of load after (default 3)")
    p.add_argument("--v2-mode", choices=V2_MODES, help="which v2 contract clients expect (default compatible)")
    p.add_argument("--load-workers", type=_integer,
                   help=f"Locust worker processes sending requests; 1 = a single process "
                        f"(default {DEFAULT_LOAD_WORKERS} here)")
    p.add_argument("--think-ms", metavar="MIN-MAX",
                   help="default users' wait between requests in ms, MIN-MAX or N (default 50-200; 0 = none)")
    p.add_argument("--client-timeout", dest="client_timeout_s", type=_number,
                   help="seconds the load generator waits for an answer (default 10)")
    p.add_argument("--drain-timeout", type=_number, help="seconds to wait for in-flight requests (default 30)")
    p.add_argument("--ready-timeout", type=_number, help="seconds for a new server to be ready (default 30)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--junit", type=Path, metavar="FILE",
                   help="write the verdict as JUnit XML, one test case per check "
                        "(compare: one test suite per strategy)")
    p.add_argument("--report", type=Path, metavar="DIR",
                   help="write report.json, chart.png, report.md here (demo: reports/demo, "
                        "compare: reports/compare)")
    p.add_argument("--mixed-check", dest="mixed_checks", action="append", default=None, metavar="CMD",
                   help="a shell command run once while both versions are attached, with SANDBOX_URL set; "
                        "a non-zero exit fails the verdict (repeatable)")
    p.add_argument("--mixed-check-timeout", dest="mixed_check_timeout_s", type=_number,
                   help="seconds each mixed check may take before it is killed and fails (default 60)")
    p.add_argument("--seed", type=_integer,
                   help="pick the servers of each batch in an order shuffled with this seed (default: slot order)")


def _add_lb_flags(p: argparse.ArgumentParser) -> None:
    """How the fleet's load balancer is set up (up, demo, compare)."""
    p.add_argument("--lb-apply", dest="lb_apply", choices=LB_APPLY_MODES,
                   help="dynamic: change the attached set without a reload (Lua balancer; default); "
                        "reload: render, nginx -t, graceful reload (the classic way)")
    p.add_argument("--client-keepalive", dest="client_keepalive", action="store_true", default=None,
                   help="keep client connections alive (the default)")
    p.add_argument("--no-client-keepalive", dest="client_keepalive", action="store_false", default=None,
                   help="close each client connection after one request (keepalive_timeout 0)")


def _add_dashboard_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dashboard", action="store_true", help="serve a live page of the rollout on 127.0.0.1")
    p.add_argument("--dashboard-port", type=_integer, default=8089, help="its port (default 8089)")


def _add_rollout_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """roll, rollback, demo (and compare)."""
    p = sub.add_parser("roll", parents=[common], help="roll the fleet to another version under live traffic")
    p.add_argument("--to", dest="to_version",
                   help="target version, one the fleet was started with "
                        "(default the last declared; v2 for the toy app)")
    p.add_argument("--strategy", choices=STRATEGIES, help="how to roll (default one-at-a-time)")
    p.add_argument("--batch", type=_integer, help="servers per batch for rolling, surge, naive (default 1)")
    p.add_argument("--mode", choices=MODES, help="replace containers or swap code in place (default replace)")
    p.add_argument("--max-error-ratio", type=_number, help="roll back above this failed share (default 0.05)")
    p.add_argument("--no-auto-rollback", dest="auto_rollback", action="store_false", default=None,
                   help="stop, don't roll back, when the rollout fails")
    p.add_argument("--set-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for the new version's servers (repeatable), e.g. APP_BOOT_FAIL=1")
    _add_load_flags(p)
    _add_dashboard_flags(p)

    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (batches, steps, peak containers, capacity) and touch nothing")
    p = sub.add_parser("rollback", parents=[common], help="return to the version before the last roll")
    p.add_argument("--strategy", choices=STRATEGIES, help="how to roll back (default one-at-a-time)")
    p.add_argument("--batch", type=_integer, help="servers per batch")
    p.add_argument("--mode", choices=MODES, help="replace or in-place (default replace)")
    _add_load_flags(p)

    p = sub.add_parser("demo", parents=[common], help="workshop demo: up 9, roll to v2 under load, report, down")
    p.add_argument("--size", type=_integer, default=9, help="servers (default 9, the classic example)")
    p.add_argument("--port", type=_integer, help="load balancer port on 127.0.0.1 (default 8080)")
    p.add_argument("--strategy", choices=STRATEGIES, help="how to roll (default one-at-a-time)")
    p.add_argument("--batch", type=_integer, help="servers per batch for rolling, surge, naive")
    p.add_argument("--sticky", action="store_true", default=None, help="route each user to one server")
    p.add_argument("--sessions", choices=SESSION_STORES,
                   help="where carts live: memory (each server's own, lost with it; default) or shared (one Redis)")
    p.add_argument("--keep", action="store_true", help="leave the fleet running afterwards")
    _add_version_flags(p)
    _add_lb_flags(p)
    _add_load_flags(p)
    _add_dashboard_flags(p)
    p.add_argument("--narrate", action="store_true",
                   help="pause at each step of the first batch and say what it does and why")
    p.set_defaults(report=Path("reports") / "demo")

    _add_compare_command(sub, common)


def _add_compare_command(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("compare", parents=[common],
                       help="run several strategies on fresh fleets under the same load; one table")
    p.add_argument("--size", type=_integer, default=9, help="servers per fleet (default 9)")
    p.add_argument("--port", type=_integer, help="load balancer port on 127.0.0.1 (default 8080)")
    p.add_argument("--strategies", default="one-at-a-time,rolling:3,double-half,blue-green,naive",
                   help="comma-separated, NAME or NAME:BATCH (default one-at-a-time,rolling:3,double-half,"
                        "blue-green,naive)")
    p.add_argument("--replace", action="store_true", help="remove existing fleets named PROJECT-N first "
                                                          "(default: refuse them, exit 2)")
    p.add_argument("--sticky", action="store_true", default=None, help="route each user to one server")
    p.add_argument("--update-parallelism", type=_integer, help="swarm-native: tasks updated at once (default 1)")
    p.add_argument("--update-delay", type=_number, help="swarm-native: seconds between batches (default 0)")
    p.add_argument("--update-failure-action", choices=FAILURE_ACTIONS,
                   help="swarm-native: what Swarm does when an update fails (default pause)")
    p.add_argument("--stop-grace-period", type=_number, help="swarm-native: SIGTERM to SIGKILL (default 20)")
    p.add_argument("--no-healthcheck", dest="swarm_healthcheck", action="store_false", default=None,
                   help="swarm-native: no HEALTHCHECK, so Swarm routes to a task as soon as it runs")
    p.add_argument("--sessions", choices=SESSION_STORES,
                   help="where carts live: memory (each server's own, lost with it; default) or shared (one Redis)")
    _add_lb_flags(p)
    _add_load_flags(p)
    _add_dashboard_flags(p)
    p.set_defaults(report=Path("reports") / "compare")


_SETTING_FLAGS = (
    "project", "engine", "size", "port", "version", "sticky", "sessions", "lb_retry", "client_keepalive", "lb_apply",
    "to_version", "strategy", "batch", "mode",
    "app_port", "health_path", "stop_signal", "stop_timeout", "app_command", "memory", "read_only",
    "drain_timeout", "ready_timeout", "max_error_ratio", "auto_rollback", "load", "users", "spawn_rate",
    "locustfile", "max_dropped", "warmup_s", "cooldown_s", "v2_mode", "load_workers", "think_ms",
    "client_timeout_s", "max_stall_s", "slow_ms", "max_slow", "max_p99_ratio", "max_violations", "min_requests",
    "update_parallelism", "update_delay", "update_failure_action", "stop_grace_period", "swarm_healthcheck",
    "seed", "mixed_check_timeout_s",
)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from flags over environment over sandbox.toml over defaults (UsageError if bad)."""
    overrides: dict[str, Any] = {name: getattr(args, name, None) for name in _SETTING_FLAGS}
    if getattr(args, "set_env", None):
        overrides["set_env"] = parse_env_pairs(args.set_env, "set_env")
    if getattr(args, "env", None):
        overrides["app_env"] = parse_env_pairs(args.env, "env")
    if getattr(args, "paths", None):
        overrides["paths"] = tuple(args.paths)
    if getattr(args, "mixed_checks", None):
        overrides["mixed_checks"] = tuple(args.mixed_checks)
    if getattr(args, "image", None):
        overrides["images"] = versions.parse_pairs(args.image, "image")
    if getattr(args, "build", None):
        overrides["builds"] = versions.parse_pairs(args.build, "build")
    if getattr(args, "v2_mode", None) == "breaking" and "set_env" not in overrides:
        overrides["set_env"] = {"APP_BREAKING": "1"}
    elif getattr(args, "v2_mode", None) == "breaking":
        overrides["set_env"] = {"APP_BREAKING": "1", **overrides["set_env"]}
    return load_settings(overrides, config_path=getattr(args, "config", None))


def _print_status(data: dict[str, Any]) -> None:
    lb = data["lb"]
    print(f"project {data['project']}: load balancer {lb['url']} ({lb['state']}, lb-apply {lb.get('lb_apply')}), "
          f"{len(lb['upstreams'])} attached")
    for inst in data["instances"]:
        mark = "attached" if inst["attached"] else "detached"
        print(f"  {inst['name']:<28} slot {inst['slot']:<3} {inst['version']}  {inst['state']:<8} "
              f"{inst['address'] or '-':<22} {mark}")


Say = Callable[[str], None]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def checked_settings(args: argparse.Namespace) -> Settings:
    """The settings of this command line; every bad value raises UsageError here, before Docker is touched."""
    settings = settings_from_args(args)
    if args.command == "demo" and args.project is None and settings.project == "sandbox":
        settings = dataclasses.replace(settings, project="sandbox-demo")
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
    if args.command == "demo":
        check_batch(settings.strategy, settings.batch, settings.size)
    if args.command in ("up", "demo", "compare"):
        check_port_free(settings.port)
    return settings


def _specs(args: argparse.Namespace) -> list[str]:
    return [s for s in args.strategies.split(",") if s.strip()] if args.command == "compare" else []


async def _images(args: argparse.Namespace, settings: Settings, runtime: Runtime, say: Say, view: LiveView) -> int:
    image_set = await commands.images(runtime=runtime, force=args.force, prune=args.prune, say=say)
    for ref in (image_set.base, image_set.lb, *image_set.app.values()):
        print(ref)
    return 0


async def _up(args: argparse.Namespace, settings: Settings, runtime: Runtime, say: Say, view: LiveView) -> int:
    _print_status(await commands.up(settings, runtime=runtime, say=say))
    return 0


async def _status(args: argparse.Namespace, settings: Settings, runtime: Runtime, say: Say, view: LiveView) -> int:
    data = await commands.status(settings, runtime=runtime)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        _print_status(data)
    return 0


async def _down(args: argparse.Namespace, settings: Settings, runtime: Runtime, say: Say, view: LiveView) -> int:
    removed = await commands.down(settings, runtime=runtime)
    services = f"{removed['services']} services, " if "services" in removed else ""
    print(f"removed {services}{removed['containers']} containers, {removed['volumes']} volumes, "
          f"{removed['networks']} networks of project {settings.project}")
    return 0


async def _roll(args: argparse.Namespace, settings: Settings, runtime: Runtime, say: Say, view: LiveView) -> int:
    if getattr(args, "dry_run", False):
        prepared = await commands.plan_only(settings, runtime=runtime, kind=args.command)
        print(json.dumps(prepared.as_json(), indent=2) if args.json else prepared.describe())
        return 0
    result = await commands.roll(settings, runtime=runtime, kind=args.command, report_dir=args.report,
                                 progress=view.progress(settings, sized=False))
    _print_rollout(args, settings, result)
    await view.close(report=result.report)
    return result.exit_code


async def _demo(args: argparse.Namespace, settings: Settings, runtime: Runtime, say: Say, view: LiveView) -> int:
    started = time.monotonic()
    result = await commands.demo(settings, runtime=runtime, keep=args.keep, report_dir=args.report, say=say,
                                 progress=view.progress(settings))
    _print_rollout(args, settings, result)
    say(f"report: {args.report / 'report.md'} (chart: {args.report / 'chart.png'})")
    say(f"demo took {time.monotonic() - started:.0f} s")
    await view.close(report=result.report)
    return result.exit_code


async def _compare(args: argparse.Namespace, settings: Settings, runtime: Runtime, say: Say, view: LiveView) -> int:
    compared = await commands.compare(settings, runtime=runtime, strategies=_specs(args), report_dir=args.report,
                                      say=say, progress_for=view.progress, replace=args.replace)
    print(json.dumps(compared.table, indent=2, default=str) if args.json else compare_text(compared.reports))
    if args.junit is not None:
        write_compare_junit(compared.reports, args.junit)
    await view.close(table=compared.table["rows"])
    return compared.exit_code


def _print_rollout(args: argparse.Namespace, settings: Settings, result: commands.RolloutResult) -> None:
    if args.json:
        print(json.dumps(result.report, indent=2, default=str))
    else:
        print(summary_text(result.report))
    if result.message:
        print(result.message, file=sys.stderr)
    if getattr(args, "junit", None) is not None:
        write_junit(result.report, args.junit)


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings, Runtime, Say, LiveView], Awaitable[int]]] = {
    "images": _images, "up": _up, "status": _status, "down": _down, "roll": _roll, "rollback": _roll,
    "demo": _demo, "compare": _compare,
}


async def _run(args: argparse.Namespace) -> int:
    settings = checked_settings(args)
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
