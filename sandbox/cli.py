"""The ``sandbox`` command: parse flags, build Settings, call ``sandbox.commands``, print.

Exit codes: 0 success, 2 bad input (nothing was touched), 1 anything else
(a failed rollout, dropped requests above ``--max-dropped``, an engine error),
130 interrupted. Expected errors print one line, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from sandbox import __version__
from sandbox.config import (
    ENGINES,
    FAILURE_ACTIONS,
    MODES,
    STRATEGIES,
    V2_MODES,
    VERSIONS,
    Settings,
    load_settings,
    parse_env_pairs,
)
from sandbox.errors import EXIT_FAILURE, EXIT_USAGE, SandboxError, UsageError

log = logging.getLogger("sandbox")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"sandbox: error: {message} (see `sandbox {self.prog.split()[-1]} --help`)\n"
                  if " " in self.prog else f"sandbox: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        return int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exc


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--project", help="project name: letters, digits, dashes (default: sandbox)")
    common.add_argument("--engine", choices=ENGINES,
                        help="docker: plain containers (default); swarm: Swarm services (see README); "
                             "status, roll, rollback, down use the engine the fleet was started with")
    common.add_argument("--config", type=Path, help="a sandbox.toml (default: ./sandbox.toml if present)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    parser = _Parser(prog="sandbox", description="Rehearse rolling deployments on a local Docker fleet.")
    parser.add_argument("--version", action="version", version=f"rolling-sandbox {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("up", parents=[common], help="start N servers behind NGINX on 127.0.0.1")
    p.add_argument("--size", type=_positive_int, help="number of app servers (default 3)")
    p.add_argument("--port", type=_positive_int, help="load balancer port on 127.0.0.1 (default 8080)")
    p.add_argument("--version", dest="version", choices=VERSIONS, help="app version to start (default v1)")
    p.add_argument("--sticky", action="store_true", default=None, help="route each user (cookie) to one server")
    p.add_argument("--lb-retry", dest="lb_retry", action="store_true", default=None,
                   help="let NGINX retry a failed connection on another server (its default; hides drops)")
    p.add_argument("--client-keepalive", dest="client_keepalive", action="store_true", default=None,
                   help="keep client connections alive (a reload then resets idle ones: see README)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="app environment (repeatable)")

    p = sub.add_parser("status", parents=[common], help="show the fleet and the load balancer")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    sub.add_parser("down", parents=[common], help="remove this project's containers and network")

    p = sub.add_parser("images", parents=[common], help="build the images that are missing")
    p.add_argument("--force", action="store_true", help="rebuild every image, the base included")
    p.add_argument("--prune", action="store_true",
                   help="then remove older rolling-sandbox images that no container uses")

    def add_load_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--users", type=_positive_int, help="simulated users (default 20)")
        p.add_argument("--spawn-rate", type=_number, help="users started per second (default 20)")
        p.add_argument("--locustfile", type=Path, help="your own locustfile instead of the default")
        p.add_argument("--no-load", dest="load", action="store_false", default=None, help="no traffic")
        p.add_argument("--max-dropped", type=_positive_int, help="exit 1 above this many dropped (default 0)")
        p.add_argument("--warmup", dest="warmup_s", type=_number, help="seconds of load before (default 3)")
        p.add_argument("--cooldown", dest="cooldown_s", type=_number, help="seconds of load after (default 3)")
        p.add_argument("--v2-mode", choices=V2_MODES, help="which v2 contract clients expect (default compatible)")
        p.add_argument("--drain-timeout", type=_number, help="seconds to wait for in-flight requests (default 30)")
        p.add_argument("--ready-timeout", type=_number, help="seconds for a new server to be ready (default 30)")
        p.add_argument("--json", action="store_true", help="print the report as JSON")
        p.add_argument("--report", type=Path, metavar="DIR",
                       help="write report.json, chart.png, report.md here (demo: reports/demo, "
                            "compare: reports/compare)")

    p = sub.add_parser("roll", parents=[common], help="roll the fleet to another version under live traffic")
    p.add_argument("--to", dest="to_version", choices=VERSIONS, help="target version (default v2)")
    p.add_argument("--strategy", choices=STRATEGIES, help="how to roll (default one-at-a-time)")
    p.add_argument("--batch", type=_positive_int, help="servers per batch for rolling, surge, naive (default 1)")
    p.add_argument("--mode", choices=MODES, help="replace containers or swap code in place (default replace)")
    p.add_argument("--max-error-ratio", type=_number, help="roll back above this failed share (default 0.05)")
    p.add_argument("--no-auto-rollback", dest="auto_rollback", action="store_false", default=None,
                   help="stop, don't roll back, when the rollout fails")
    p.add_argument("--set-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for the new version's servers (repeatable), e.g. APP_BOOT_FAIL=1")
    add_load_flags(p)

    p = sub.add_parser("rollback", parents=[common], help="return to the version before the last roll")
    p.add_argument("--strategy", choices=STRATEGIES, help="how to roll back (default one-at-a-time)")
    p.add_argument("--batch", type=_positive_int, help="servers per batch")
    p.add_argument("--mode", choices=MODES, help="replace or in-place (default replace)")
    add_load_flags(p)

    p = sub.add_parser("demo", parents=[common], help="workshop demo: up 9, roll to v2 under load, report, down")
    p.add_argument("--size", type=_positive_int, default=9, help="servers (default 9, the classic example)")
    p.add_argument("--port", type=_positive_int, help="load balancer port on 127.0.0.1 (default 8080)")
    p.add_argument("--strategy", choices=STRATEGIES, help="how to roll (default one-at-a-time)")
    p.add_argument("--batch", type=_positive_int, help="servers per batch for rolling, surge, naive")
    p.add_argument("--sticky", action="store_true", default=None, help="route each user to one server")
    p.add_argument("--keep", action="store_true", help="leave the fleet running afterwards")
    add_load_flags(p)

    p = sub.add_parser("compare", parents=[common],
                       help="run several strategies on fresh fleets under the same load; one table")
    p.add_argument("--size", type=_positive_int, default=9, help="servers per fleet (default 9)")
    p.add_argument("--port", type=_positive_int, help="load balancer port on 127.0.0.1 (default 8080)")
    p.add_argument("--strategies", default="one-at-a-time,rolling:3,double-half,blue-green,naive",
                   help="comma-separated, NAME or NAME:BATCH (default one-at-a-time,rolling:3,double-half,"
                        "blue-green,naive)")
    p.add_argument("--sticky", action="store_true", default=None, help="route each user to one server")
    p.add_argument("--update-parallelism", type=_positive_int, help="swarm-native: tasks updated at once (default 1)")
    p.add_argument("--update-delay", type=_number, help="swarm-native: seconds between batches (default 0)")
    p.add_argument("--update-failure-action", choices=FAILURE_ACTIONS,
                   help="swarm-native: what Swarm does when an update fails (default pause)")
    p.add_argument("--stop-grace-period", type=_number, help="swarm-native: SIGTERM to SIGKILL (default 20)")
    p.add_argument("--no-healthcheck", dest="swarm_healthcheck", action="store_false", default=None,
                   help="swarm-native: no HEALTHCHECK, so Swarm routes to a task as soon as it runs")
    add_load_flags(p)
    return parser


_SETTING_FLAGS = (
    "project", "engine", "size", "port", "version", "sticky", "lb_retry", "client_keepalive",
    "to_version", "strategy", "batch", "mode",
    "drain_timeout", "ready_timeout", "max_error_ratio", "auto_rollback", "load", "users", "spawn_rate",
    "locustfile", "max_dropped", "warmup_s", "cooldown_s", "v2_mode",
    "update_parallelism", "update_delay", "update_failure_action", "stop_grace_period", "swarm_healthcheck",
)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from flags over environment over sandbox.toml over defaults (UsageError if bad)."""
    overrides: dict[str, Any] = {name: getattr(args, name, None) for name in _SETTING_FLAGS}
    if getattr(args, "set_env", None):
        overrides["set_env"] = parse_env_pairs(args.set_env, "set_env")
    if getattr(args, "env", None):
        overrides["app_env"] = parse_env_pairs(args.env, "env")
    if getattr(args, "v2_mode", None) == "breaking" and "set_env" not in overrides:
        overrides["set_env"] = {"APP_BREAKING": "1"}
    elif getattr(args, "v2_mode", None) == "breaking":
        overrides["set_env"] = {"APP_BREAKING": "1", **overrides["set_env"]}
    return load_settings(overrides, config_path=getattr(args, "config", None))


def _print_status(data: dict[str, Any]) -> None:
    lb = data["lb"]
    print(f"project {data['project']}: load balancer {lb['url']} ({lb['state']}), "
          f"{len(lb['upstreams'])} attached")
    for inst in data["instances"]:
        mark = "attached" if inst["attached"] else "detached"
        print(f"  {inst['name']:<28} slot {inst['slot']:<3} {inst['version']}  {inst['state']:<8} "
              f"{inst['address'] or '-':<22} {mark}")


async def _run(args: argparse.Namespace) -> int:
    from sandbox import commands
    from sandbox.fleet import engines
    from sandbox.results.report import summary_text

    settings = settings_from_args(args)  # every bad value is rejected here, before Docker is touched
    specs = [s for s in args.strategies.split(",") if s.strip()] if args.command == "compare" else []
    for spec in specs:
        if commands.parse_strategy_spec(spec)[0] == "swarm-native" and settings.engine != "swarm":
            raise UsageError(f"strategies: {spec.strip()!r} needs --engine swarm")
    if args.command in ("up", "demo", "compare"):
        from sandbox.config import check_port_free
        check_port_free(settings.port)
    on_fleet = args.command in ("status", "roll", "rollback", "down")  # these use the fleet's own engine
    runtime = engines.connect(settings.engine, settings.project if on_fleet else None)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    if args.command == "images":
        image_set = await commands.images(runtime=runtime, force=args.force, say=say)
        for ref in (image_set.base, image_set.lb, *image_set.app.values()):
            print(ref)
        if args.prune:
            from sandbox.fleet.images import prune_images
            removed = await asyncio.to_thread(prune_images, runtime.client)
            say(f"removed {len(removed)} older images" + (f": {', '.join(removed)}" if removed else ""))
        return 0
    if args.command == "up":
        data = await commands.up(settings, runtime=runtime, say=say)
        _print_status(data)
        return 0
    if args.command == "status":
        data = await commands.status(settings, runtime=runtime)
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            _print_status(data)
        return 0
    if args.command == "down":
        removed = await commands.down(settings, runtime=runtime)
        services = f"{removed['services']} services, " if "services" in removed else ""
        print(f"removed {services}{removed['containers']} containers, {removed['volumes']} volumes, "
              f"{removed['networks']} networks of project {settings.project}")
        return 0
    if args.command in ("roll", "rollback"):
        result = await commands.roll(settings, runtime=runtime, kind=args.command, report_dir=args.report)
        if args.json:
            print(json.dumps(result.report, indent=2, default=str))
        else:
            print(summary_text(result.report, max_dropped=settings.max_dropped))
        if result.message:
            print(result.message, file=sys.stderr)
        return result.exit_code
    if args.command == "demo":
        if settings.project == "sandbox" and args.project is None:
            settings = dataclasses.replace(settings, project="sandbox-demo")
        started = time.monotonic()
        args.report = args.report or Path("reports") / "demo"
        result = await commands.demo(settings, runtime=runtime, keep=args.keep, report_dir=args.report, say=say)
        if args.json:
            print(json.dumps(result.report, indent=2, default=str))
        else:
            print(summary_text(result.report, max_dropped=settings.max_dropped))
        if result.message:
            say(result.message)
        say(f"report: {args.report / 'report.md'} (chart: {args.report / 'chart.png'})")
        say(f"demo took {time.monotonic() - started:.0f} s")
        return result.exit_code
    if args.command == "compare":
        from sandbox.results.report import compare_json, compare_table, compare_text
        args.report = args.report or Path("reports") / "compare"
        reports = await commands.compare(settings, runtime=runtime, strategies=specs, report_dir=args.report,
                                         say=say)
        table = compare_json(reports)
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "compare.json").write_text(json.dumps(table, indent=2, default=str))
        (args.report / "compare.md").write_text(compare_table(reports))
        say(f"compare: {args.report / 'compare.md'} and compare.json, one report per strategy beside them")
        print(json.dumps(table, indent=2, default=str) if args.json else compare_text(reports))
        return 0 if all(r["outcome"] == "completed" for r in reports if r["strategy"] != "naive") else 1
    raise UsageError(f"unknown command {args.command!r}")  # pragma: no cover - argparse prevents it


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(_run(args))
    except SandboxError as exc:
        print(f"sandbox: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sandbox: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug: show everything
        log.exception("unexpected error")
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
