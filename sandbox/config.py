"""Typed settings, defined once, validated once, before anything is touched.

Each setting is one field of :class:`Settings`; its :func:`setting` metadata gives its group, flag(s),
bounds and help. From that one definition come the CLI's flags (``sandbox.cli``), the environment
variable ``SANDBOX_<NAME>``, the ``sandbox.toml`` key (in ``[sandbox]`` or its group's table, e.g.
``[limits]``), the conversion of text to the field's type (from its annotation) and the checks of
its choices and bounds; rules across settings are the small functions below :func:`validate`.
Values come, lowest precedence first, from defaults, ``sandbox.toml`` (``--config`` or
``./sandbox.toml``), the environment and flags. A bad value raises one-line
:class:`~sandbox.errors.UsageError` naming it as the user wrote it: ``--size: 0 must be between 1
and 64``, ``SANDBOX_SIZE: ...``, or the TOML key; so the CLI exits 2 and no container is created.

Field metadata of our own, not pydantic-settings or cyclopts: neither builds per-command argparse
flags with these one-line errors without translating their errors and help back, and a plain frozen
dataclass keeps flat attribute access (``settings.size``) with no new dependency.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from sandbox.errors import DEFAULT_PROJECT, PortInUseError, UsageError
from sandbox.fleet.versions import TOY_VERSIONS, AppSpec, check_declared, check_name, check_spec, parse_pairs
from sandbox.load.rows import DEFAULT_THINK_MS, V2Mode, parse_think_ms
from sandbox.rollout import hooks, strategies
from sandbox.rollout.plan import Mode, Strategy, Version  # one definition each: the planner's

LbApply = Literal["reload", "dynamic"]
Engine = Literal["docker", "swarm"]
FailureAction = Literal["pause", "rollback", "continue"]
PauseTimeoutAction = Literal["abort", "resume"]
SessionStore = Literal["memory", "shared"]
MigrateAt = Literal["before", "after"]
SERVICES: tuple[str, ...] = ("postgres",)  # what `up --service` can start beside the fleet
Group = Literal["fleet", "app", "rollout", "swarm", "load", "limits"]

GROUPS: tuple[Group, ...] = get_args(Group)
STRATEGIES: tuple[str, ...] = strategies.NAMES

PROJECT_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38}[A-Za-z0-9])?$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Locust worker processes by default: one per core, at least 2 (measured in README, "Load").
DEFAULT_LOAD_WORKERS = max(2, min(os.cpu_count() or 2, 4))


@dataclass(frozen=True)
class Spec:
    """One setting's definition, as written in its field's metadata (see :func:`setting`)."""

    group: Group
    help: str
    flag: str | None = None  # sets the value; a bool's sets True unless it has a metavar (``--read-only true``)
    off_flag: str | None = None  # a bool's flag that sets False (``--no-load``)
    off_help: str = ""  # its help, when the setting has both flags
    metavar: str | None = None
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    unit: str = ""  # after the bounds in messages: "seconds", "ms"
    item: str = ""  # how errors about one item of a list or mapping name it (``path`` for ``paths``)
    split: str = ","  # an environment variable's list items are separated by this
    pairs: Callable[[Sequence[str], str], dict[str, str]] | None = None  # ``KEY=VALUE`` text to a mapping
    check: Callable[[Any], None] | None = None  # raises ValueError with the reason
    choices: tuple[str, ...] = ()  # a str setting's values where its annotation is no Literal (a registry's names)


def setting(default: Any = MISSING, *, factory: Callable[[], Any] | None = None, **spec: Any) -> Any:
    """A :class:`Settings` field whose metadata is its :class:`Spec` (keywords as Spec's)."""
    metadata = {"setting": Spec(**spec)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _project_name(value: str) -> None:
    if not PROJECT_RE.match(value):
        raise ValueError(f"{value!r} must be 1-40 letters, digits or dashes, not starting or ending with a dash")


def _seed(value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{value!r} must be a whole number >= 0")


def _think_ms(value: str) -> None:
    parse_think_ms(value)


def _paths(value: tuple[str, ...]) -> None:
    for path in value:
        if not (isinstance(path, str) and path.startswith("/") and " " not in path):
            raise ValueError(f"{path!r} must start with / and have no spaces")


def _path(value: str) -> None:
    _paths((value,))


def _locustfile(value: Path | None) -> None:
    if value is not None and not value.is_file():
        raise ValueError(f"{value} is not a file")


def _environment(value: Mapping[str, str]) -> None:
    for key, text in value.items():
        if not ENV_KEY_RE.match(key):
            raise ValueError(f"{key!r} is not a valid environment variable name")
        if not isinstance(text, str):
            raise ValueError(f"{key} must be a string")


def _commands(value: tuple[str, ...]) -> None:
    if not isinstance(value, tuple):
        raise ValueError("must be a list of shell commands")
    for command in value:
        if not (isinstance(command, str) and command.strip()):
            raise ValueError(f"{command!r} must be a non-empty shell command")


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``"10m"``, ``"90s"``, ``"1.5h"``, ``"250ms"`` or a bare number of seconds, in seconds;
    ValueError otherwise."""
    match = _DURATION_RE.match(str(text))
    if match is None:
        raise ValueError(f"{text!r} must be a duration like 90s, 10m, 1h (or seconds)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]


def _pause_timeout(value: str) -> None:
    seconds = parse_duration(value)
    if not 0 < seconds <= 24 * 3600:
        raise ValueError(f"{value!r} must be above 0 and at most 24h")


def parse_steps(text: str) -> tuple[int, ...]:
    """``"5,25,50,100"`` as (5, 25, 50, 100); ValueError unless they rise from 1 to 100 and end at 100."""
    try:
        weights = tuple(int(part) for part in str(text).replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"{text!r} must be whole percentages separated by commas, e.g. 5,25,50,100") from None
    strategies.check_weights(weights)
    return weights


def _steps(value: str) -> None:
    parse_steps(value)


MANUAL = "manual"  # --step-pause manual: each canary step waits for `sandbox promote`


def _step_pause(value: str) -> None:
    if value == MANUAL:
        return
    seconds = parse_duration(value)
    if not 0 < seconds <= 24 * 3600:
        raise ValueError(f"{value!r} must be a duration above 0 and at most 24h, or manual")


def _pause_after_batch(value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{value!r} must be a batch number, 1 or more")
def _services(value: tuple[str, ...]) -> None:
    for name in value:
        if name not in SERVICES:
            raise ValueError(f"{name!r} must be one of {', '.join(SERVICES)}")
    if len(set(value)) != len(value):
        raise ValueError(f"{', '.join(value)} names a service twice")


def parse_env_pairs(pairs: Sequence[str], name: str = "set_env") -> dict[str, str]:
    """Turn ``["KEY=VALUE", ...]`` into a dict; raise UsageError naming ``name`` on a bad pair."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not ENV_KEY_RE.match(key):
            raise UsageError(f"{name}: {pair!r} must look like KEY=VALUE")
        out[key] = value
    return out


@dataclass(frozen=True)
class Settings:
    """Everything a command may need; each command reads the fields it uses.

    ``origin`` is not a setting: it says how the user named each value that came from a flag, a
    variable or a file (``--client-timeout``), so that errors name it so.
    """

    project: str = setting(DEFAULT_PROJECT, group="fleet", flag="--project", check=_project_name,
                           help="project name: letters, digits, dashes")
    engine: Engine = setting("docker", group="fleet", flag="--engine",
                             help="docker: plain containers (default); swarm: Swarm services (see README); "
                                  "status, roll, rollback, down use the engine the fleet was started with")
    size: int = setting(3, group="fleet", flag="--size", at_least=1, at_most=64,
                        help="number of app servers (default 3; demo and compare: 9, the classic example)")
    port: int = setting(8080, group="fleet", flag="--port", at_least=1, at_most=65535,
                        help="load balancer port on 127.0.0.1 (default 8080)")
    sticky: bool = setting(False, group="fleet", flag="--sticky", help="route each user (cookie) to one server")
    sessions: SessionStore = setting("memory", group="fleet", flag="--sessions",
                                     help="where carts live: memory (each server's own, lost with it; default) "
                                          "or shared (one Redis)")
    services: tuple[str, ...] = setting((), group="fleet", flag="--service", metavar="NAME", check=_services,
                                        help="start a service for the fleet (repeatable): postgres = a PostgreSQL "
                                             "server on the project network, its DATABASE_URL given to every server")
    lb_retry: bool = setting(False, group="fleet", flag="--lb-retry",
                             help="let NGINX retry a failed connection on another server (its default; hides drops)")
    lb_apply: LbApply = setting("dynamic", group="fleet", flag="--lb-apply",
                                help="dynamic: change the attached set without a reload (Lua balancer; default); "
                                     "reload: render, nginx -t, graceful reload (the classic way)")
    client_keepalive: bool = setting(True, group="fleet", flag="--client-keepalive", off_flag="--no-client-keepalive",
                                     help="keep client connections alive (the default)",
                                     off_help="close each client connection after one request (keepalive_timeout 0)")
    # your app: its versions and its contract (sandbox.fleet.versions.AppSpec; recorded in the fleet at `up`)
    version: Version = setting("", group="app", flag="--version",
                               help="version to start: one of --image/--build names (default the first; "
                                    "v1 for the toy app)")
    images: Mapping[str, str] = setting(factory=dict, group="app", flag="--image", metavar="NAME=REF", item="image",
                                        pairs=parse_pairs,
                                        help="a version of your app: a name you pick and a local image (repeatable)")
    builds: Mapping[str, str] = setting(factory=dict, group="app", flag="--build", metavar="NAME=DIR", item="build",
                                        pairs=parse_pairs,
                                        help="a version built first from DIR's Dockerfile (repeatable)")
    app_port: int = setting(8000, group="app", flag="--app-port", at_least=1, at_most=65535,
                            help="the port your app listens on (default 8000)")
    health_path: str = setting("", group="app", flag="--health-path",
                               help="ready when GET PATH answers 2xx (default: the image's HEALTHCHECK, "
                                    "else the port accepts a connection; the toy app: /healthz)")
    stop_signal: str = setting("", group="app", flag="--stop-signal",
                               help="signal that asks your app to stop (default: the image's, SIGTERM)")
    stop_timeout: float = setting(20.0, group="app", flag="--stop-timeout", above=0, at_most=3600, unit="seconds",
                                  help="seconds after it before SIGKILL (default 20)")
    app_command: str = setting("", group="app", flag="--command",
                               help="run this instead of the image's CMD (split like a shell)")
    memory: str = setting("128m", group="app", flag="--memory", help="memory limit of each server (default 128m)")
    read_only: bool = setting(True, group="app", flag="--read-only", metavar="true|false",
                              help="read-only root filesystem (default true; /tmp is always writable)")
    app_env: Mapping[str, str] = setting(factory=dict, group="app", flag="--env", metavar="KEY=VALUE",
                                         pairs=parse_env_pairs, check=_environment,
                                         help="app environment (repeatable)")
    # rollout
    to_version: Version = setting("", group="rollout", flag="--to",
                                  help="target version, one the fleet was started with "
                                       "(default the last declared; v2 for the toy app)")
    strategy: Strategy = setting(strategies.DEFAULT_STRATEGY, group="rollout", flag="--strategy", choices=STRATEGIES,
                                 help="how to roll (default one-at-a-time)")
    batch: int = setting(1, group="rollout", flag="--batch", at_least=1,
                         help="servers per batch for rolling, surge, naive (default 1)")
    mode: Mode = setting("replace", group="rollout", flag="--mode",
                         help="replace containers or swap code in place (default replace)")
    drain_timeout: float = setting(30.0, group="rollout", flag="--drain-timeout", above=0, at_most=3600,
                                   unit="seconds", help="seconds to wait for in-flight requests (default 30)")
    ready_timeout: float = setting(30.0, group="rollout", flag="--ready-timeout", above=0, at_most=3600,
                                   unit="seconds", help="seconds for a new server to be ready (default 30)")
    ready_successes: int = setting(1, group="rollout", at_least=1, at_most=20,
                                   help="readiness answers in a row for the version it serves (one pass is exact)")
    detach_lag_s: float = setting(0.0, group="rollout", flag="--detach-lag", at_least=0, at_most=600,
                                  unit="seconds",
                                  help="send each server being removed its stop signal this many seconds before "
                                       "the load balancer stops routing to it, as Kubernetes' endpoint removal "
                                       "lags SIGTERM (default 0: detach, drain, then stop)")
    settle_s: float = setting(0.0, group="rollout", at_least=0, at_most=60, unit="seconds",
                              help="seconds to wait after each batch is attached")
    max_error_ratio: float = setting(0.05, group="rollout", flag="--max-error-ratio", at_least=0, at_most=1,
                                     help="roll back above this failed share (default 0.05)")
    auto_rollback: bool = setting(True, group="rollout", off_flag="--no-auto-rollback",
                                  help="stop, don't roll back, when the rollout fails")
    set_env: Mapping[str, str] = setting(factory=dict, group="rollout", flag="--set-env", metavar="KEY=VALUE",
                                         pairs=parse_env_pairs, check=_environment,
                                         help="environment for the new version's servers (repeatable), "
                                              "e.g. APP_BOOT_FAIL=1")
    seed: int | None = setting(None, group="rollout", flag="--seed", check=_seed,
                               help="pick the servers of each batch in an order shuffled with this seed "
                                    "(default: slot order)")
    mixed_checks: tuple[str, ...] = setting((), group="rollout", flag="--mixed-check", metavar="CMD", split="\n",
                                            check=_commands,
                                            help="a shell command run once while both versions are attached, "
                                                 "with SANDBOX_URL set; a non-zero exit fails the verdict "
                                                 "(repeatable)")
    mixed_check_timeout_s: float = setting(60.0, group="rollout", flag="--mixed-check-timeout", above=0,
                                           at_most=3600, unit="seconds",
                                           help="seconds each mixed check may take before it is killed and fails "
                                                "(default 60)")
    # steering a running rollout (sandbox.rollout.steer): pause, resume, abort, promote
    pause_after_batch: int | None = setting(None, group="rollout", flag="--pause-after-batch", metavar="N",
                                            check=_pause_after_batch,
                                            help="pause once batch N is attached, before the next batch starts; "
                                                 "`sandbox resume` or `promote` goes on (default: no pause)")
    pause_at_mixed: bool = setting(False, group="rollout", flag="--pause-at-mixed",
                                   help="pause at the first moment both versions serve (header X-Sandbox-Version "
                                        "then reaches either); `sandbox resume` or `promote` goes on")
    pause_timeout: str = setting("10m", group="rollout", flag="--pause-timeout", metavar="DURATION",
                                 check=_pause_timeout,
                                 help="a pause longer than this ends as --on-pause-timeout says (default 10m)")
    on_pause_timeout: PauseTimeoutAction = setting("abort", group="rollout", flag="--on-pause-timeout",
                                                   help="what a pause past --pause-timeout does: abort (roll "
                                                        "back; default) or resume")
    min_ready_s: float = setting(0.0, group="rollout", flag="--min-ready-s", at_least=0, at_most=3600,
                                 unit="seconds",
                                 help="a new server must stay ready this long before it counts and is attached; "
                                      "failing a check meanwhile fails the rollout (default 0)")
    progress_deadline_s: float = setting(0.0, group="rollout", flag="--progress-deadline", at_least=0,
                                         at_most=86400, unit="seconds",
                                         help="fail and roll back when no step completes for this long, time "
                                              "paused not counted (default 0: no deadline)")
    # --strategy canary (sandbox.rollout.canary): weights, the time at each step and its analysis
    steps: str = setting("5,25,50,100", group="rollout", flag="--steps", metavar="W1,W2,...", check=_steps,
                         help="canary: the new version's share of requests, in percent, at each step, rising to 100 "
                              "(default 5,25,50,100)")
    step_pause: str = setting("30s", group="rollout", flag="--step-pause", metavar="DURATION|manual",
                              check=_step_pause,
                              help="canary: how long each step lasts before its analysis decides (default 30s); "
                                   "manual: each step waits for `sandbox promote`")
    max_step_extensions: int = setting(3, group="rollout", flag="--max-step-extensions", metavar="N", at_least=0,
                                       at_most=20,
                                       help="canary: how many times an inconclusive step (too few answers) is "
                                            "extended by --step-pause before it fails (default 3)")
    sticky_canary: bool = setting(False, group="rollout", flag="--sticky-canary",
                                  help="canary: a user who got the new version stays on it (dynamic mode)")
    migrate: str = setting("", group="rollout", flag="--migrate", metavar="CMD",
                           help="a shell command run once in a one-off container of the target image, with the "
                                "app's environment (DATABASE_URL), once: by default before the first batch; "
                                "a failure stops the roll before anything changes")
    migrate_at: MigrateAt = setting("before", group="rollout", flag="--migrate-at",
                                    help="before: ahead of the first batch (default); after: once every server "
                                         "is new (a contract step)")
    migrate_timeout_s: float = setting(300.0, group="rollout", flag="--migrate-timeout", above=0, at_most=3600,
                                       unit="seconds", help="seconds the migration may take before it is killed "
                                                            "and fails (default 300)")
    contract: str = setting("", group="rollout", flag="--contract", metavar="CMD",
                            help="a shell command run once in a one-off container of the target image, like "
                                 "--migrate, once every server is new (the contract step of expand/contract); "
                                 "its failure fails the verdict, the fleet stays on the new version")
    rollback_rehearsal_s: float = setting(4.0, group="rollout", flag="--rehearse-rollback", at_least=0,
                                          at_most=120, unit="seconds",
                                          help="with --migrate or --contract: after the rollout and after the "
                                               "contract, serve the old version's image against the database "
                                               "for this long under the toy's request mix, off the load "
                                               "balancer, and report whether a rollback would work "
                                               "(default 4; 0: no rehearsal)")
    hooks: tuple[str, ...] = setting((), group="rollout", flag="--hook", metavar="EVENT=CMD", split="\n",
                                     check=hooks.check,
                                     help="run CMD on the host through sh -c at EVENT, one of pre-rollout "
                                          "(a failure stops before anything changes), post-batch (a failure "
                                          "rolls back), post-rollout (a failure fails the verdict) and "
                                          "on-rollback, with SANDBOX_URL, SANDBOX_PROJECT, SANDBOX_VERSIONS, "
                                          "SANDBOX_BATCH and DATABASE_URL set (repeatable: an event's commands "
                                          "run in order)")
    hook_timeout_s: float = setting(60.0, group="rollout", flag="--hook-timeout", above=0, at_most=3600,
                                    unit="seconds", help="seconds each hook may take before it is killed and "
                                                         "fails (default 60)")
    # swarm-native (compare on --engine swarm): Swarm's own `service update` config
    update_parallelism: int = setting(1, group="swarm", flag="--update-parallelism", at_least=1,
                                      help="swarm-native: tasks updated at once (default 1)")
    update_delay: float = setting(0.0, group="swarm", flag="--update-delay", at_least=0, at_most=3600,
                                  unit="seconds", help="swarm-native: seconds between batches (default 0)")
    update_failure_action: FailureAction = setting("pause", group="swarm", flag="--update-failure-action",
                                                   help="swarm-native: what Swarm does when an update fails "
                                                        "(default pause)")
    stop_grace_period: float = setting(20.0, group="swarm", flag="--stop-grace-period", above=0, at_most=3600,
                                       unit="seconds", help="swarm-native: SIGTERM to SIGKILL (default 20)")
    swarm_healthcheck: bool = setting(True, group="swarm", off_flag="--no-healthcheck",
                                      help="swarm-native: no HEALTHCHECK, so Swarm routes to a task as soon as it runs")
    # load
    load: bool = setting(True, group="load", off_flag="--no-load", help="no traffic")
    users: int = setting(20, group="load", flag="--users", at_least=1, at_most=1000,
                         help="simulated users (default 20)")
    spawn_rate: float = setting(20.0, group="load", flag="--spawn-rate", above=0, at_most=1000,
                                help="users started per second (default 20)")
    locustfile: Path | None = setting(None, group="load", flag="--locustfile", check=_locustfile,
                                      help="your own locustfile instead of the default")
    paths: tuple[str, ...] = setting((), group="load", flag="--path", metavar="PATH", item="path", check=_paths,
                                     help="your own app without a locustfile: the default users GET these "
                                          "(repeatable, default /)")
    ws_users: int = setting(0, group="load", flag="--ws-users", at_least=0, at_most=1000,
                            help="users holding a WebSocket (GET /ws) open beside the HTTP users, reconnecting "
                                 "when it closes (default 0)")
    sse_users: int = setting(0, group="load", flag="--sse-users", at_least=0, at_most=1000,
                             help="users holding an event stream (GET /events) open beside the HTTP users, "
                                  "reconnecting when it ends (default 0)")
    ws_path: str = setting("/ws", group="load", flag="--ws-path", metavar="PATH", check=_path,
                           help="the WebSocket path the --ws-users open on your app (default /ws, the toy's); "
                                "a path that does not upgrade is refused before the rollout")
    sse_path: str = setting("/events", group="load", flag="--sse-path", metavar="PATH", check=_path,
                            help="the event-stream path the --sse-users open on your app (default /events, the "
                                 "toy's); a path that answers no text/event-stream is refused before the rollout")
    warmup_s: float = setting(3.0, group="load", flag="--warmup", at_least=0, at_most=600, unit="seconds",
                              help="seconds of load before (default 3)")
    cooldown_s: float = setting(3.0, group="load", flag="--cooldown", at_least=0, at_most=600, unit="seconds",
                                help="seconds of load after (default 3)")
    v2_mode: V2Mode = setting("compatible", group="load", flag="--v2-mode",
                              help="which v2 contract clients expect (default compatible)")
    load_workers: int = setting(DEFAULT_LOAD_WORKERS, group="load", flag="--load-workers", at_least=1, at_most=16,
                                help=f"Locust worker processes sending requests; 1 = a single process "
                                     f"(default {DEFAULT_LOAD_WORKERS} here)")
    think_ms: str = setting(DEFAULT_THINK_MS, group="load", flag="--think-ms", metavar="MIN-MAX", check=_think_ms,
                            help="default users' wait between requests in ms, MIN-MAX or N (default 50-200; 0 = none)")
    client_timeout_s: float = setting(10.0, group="load", flag="--client-timeout", above=0, at_most=600,
                                      unit="seconds",
                                      help="seconds the load generator waits for an answer (default 10)")
    # the verdict (sandbox.results.verdict.Limits has the same names)
    max_dropped: int = setting(0, group="limits", flag="--max-dropped", at_least=0,
                               help="verdict: at most this many dropped (default 0)")
    max_stall_s: float = setting(1.0, group="limits", flag="--max-stall-s", above=0, at_most=3600,
                                 unit="seconds", help="verdict: longest stretch with no answer (default 1 s)")
    slow_ms: float = setting(2000.0, group="limits", flag="--slow-ms", above=0, at_most=3_600_000, unit="ms",
                             help="a request slower than this is slow (default 2000)")
    max_slow: int = setting(0, group="limits", flag="--max-slow", at_least=0,
                            help="verdict: at most this many slow (default 0)")
    max_p99_ratio: float = setting(3.0, group="limits", flag="--max-p99-ratio", at_least=1, at_most=1000,
                                   help="verdict: over --max-p99-ms, rollout p99 at most this times a warmup's "
                                        "already over it (default 3)")
    max_p99_ms: float = setting(500.0, group="limits", flag="--max-p99-ms", above=0, at_most=600_000, unit="ms",
                                help="verdict: rollout p99 at most this many ms (default 500)")
    min_latency_samples: int = setting(200, group="limits", flag="--min-latency-samples", at_least=1,
                                       help="verdict: the p99 checks need this many requests in each phase, "
                                                       "else they are skipped (default 200)")
    max_violations: int = setting(0, group="limits", flag="--max-violations", at_least=0,
                                  help="verdict: at most this many contract violations (default 0)")
    max_not_found: int = setting(0, group="limits", flag="--max-not-found", at_least=0,
                                 help="verdict: at most this many 404/410 answers from the rollout's start on, "
                                      "an endpoint one version lacks (default 0)")
    max_migration_errors: int = setting(0, group="limits", flag="--max-migration-errors", at_least=0,
                                        help="verdict (with a migration): at most this many error answers "
                                             "(4xx/5xx) to requests sent after it ended, any version (default 0)")
    require_rollback_safe: bool = setting(False, group="limits", flag="--require-rollback-safe",
                                          help="verdict: every rollback rehearsal must find the old version "
                                               "working against the schema (default: shown, not judged; a "
                                               "contract step makes a rollback unsafe by design)")
    max_abnormal_closes: int = setting(0, group="limits", flag="--max-abnormal-closes", at_least=0,
                                       help="verdict: at most this many long-lived connections closed without the "
                                            "server's goodbye (WebSocket 1006, a cut event stream) (default 0)")
    max_messages_lost: int = setting(0, group="limits", flag="--max-messages-lost", at_least=0,
                                     help="verdict: at most this many numbered messages missing on long-lived "
                                          "connections (default 0)")
    max_reconnect_p99_ms: float = setting(2000.0, group="limits", flag="--max-reconnect-p99-ms", above=0,
                                          at_most=600_000, unit="ms",
                                          help="verdict: p99 of the time from a long-lived connection's end to "
                                               "its user's next one open (default 2000: the clients wait up to "
                                               "the 1000 ms hint on purpose, plus room for the connect)")
    min_requests: int = setting(100, group="limits", flag="--min-requests", at_least=0,
                                help="verdict: at least this many requests measured (default 100)")

    origin: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            validate(self)
        except UsageError as exc:
            raise renamed(exc, self.origin) from None

    @property
    def canary_weights(self) -> tuple[int, ...]:
        """``steps`` as percentages."""
        return parse_steps(self.steps)

    @property
    def step_pause_s(self) -> float | None:
        """``step_pause`` in seconds; None for manual."""
        return None if self.step_pause == MANUAL else parse_duration(self.step_pause)

    @property
    def pause_timeout_s(self) -> float:
        """``pause_timeout`` in seconds."""
        return parse_duration(self.pause_timeout)

    def called(self, name: str) -> str:
        """How the user named setting ``name``: its flag, variable or TOML key (its own name by default)."""
        return self.origin.get(name, name)

    def group(self, name: Group) -> dict[str, Any]:
        """The settings of one group (``fleet``, ``app``, ``rollout``, ``swarm``, ``load``, ``limits``)."""
        return {s.name: getattr(self, s.name) for s in SETTINGS.values() if s.spec.group == name}

    def app_spec(self) -> AppSpec:
        """The app's contract these settings declare."""
        return AppSpec(port=self.app_port, health_path=self.health_path, stop_signal=self.stop_signal.upper(),
                       stop_timeout=self.stop_timeout, command=tuple(shlex.split(self.app_command)),
                       memory=self.memory, read_only=self.read_only)


_KINDS: dict[type, type | tuple[type, ...]] = {bool: bool, int: int, float: (int, float), str: str, Path: Path}


@dataclass(frozen=True)
class Setting:
    """One setting resolved from its field: its name, its Spec and the type its annotation gives."""

    name: str
    spec: Spec
    kind: type  # bool, int, float, str, Path, tuple or dict
    choices: tuple[str, ...]  # a Literal's values
    optional: bool  # None is a value (``seed``, ``locustfile``)

    @property
    def env(self) -> str:
        return f"SANDBOX_{self.name.upper()}"

    @property
    def flags(self) -> tuple[str, ...]:
        return tuple(flag for flag in (self.spec.flag, self.spec.off_flag) if flag)

    def parse(self, raw: Any, label: str) -> Any:
        """``raw`` (a TOML value, a variable's or a flag's text or list) as this setting's type;
        UsageError naming ``label`` when it is not one."""
        try:
            return self._parse(raw)
        except UsageError as exc:
            raise renamed(exc, {self.name: label}) from None
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{label}: {raw!r} is not a valid value") from exc

    def _parse(self, raw: Any) -> Any:
        if self.optional and raw in (None, ""):
            return None
        if self.kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(text)
            return text in ("1", "true", "yes", "on")
        if self.kind in (int, float) and isinstance(raw, bool):
            raise ValueError(raw)
        if self.kind is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw if isinstance(raw, (int, float)) else str(raw).strip())
        if self.kind is tuple:
            if isinstance(raw, str):
                return tuple(item for item in raw.split(self.spec.split) if item.strip())
            if isinstance(raw, (list, tuple)) and all(isinstance(item, str) for item in raw):
                return tuple(raw)
            raise ValueError(raw)
        if self.kind is dict:
            if isinstance(raw, Mapping):
                return {str(k): str(v) for k, v in raw.items()}
            items = [p for p in raw.split(",") if p] if isinstance(raw, str) else list(raw)
            assert self.spec.pairs is not None  # every mapping setting says how its text reads
            return self.spec.pairs(items, self.spec.item or self.name)
        if self.kind is float:
            return float(raw)
        return Path(str(raw)) if self.kind is Path else str(raw)

    def check(self, value: Any) -> None:
        """UsageError naming this setting when ``value`` is not of its type, choices, bounds or own check."""
        name = self.spec.item or self.name
        kind = _KINDS.get(self.kind)
        if not (value is None and self.optional):
            typed = kind is None or (isinstance(value, kind) and isinstance(value, bool) == (self.kind is bool))
            if not typed:
                raise UsageError(f"{name}: {value!r} is not a valid value")
            if self.choices and value not in self.choices:
                raise UsageError(f"{name}: {value!r} must be one of {', '.join(self.choices)}")
            self.check_bounds(value, name)
        if self.spec.check is not None:
            try:
                self.spec.check(value)
            except ValueError as exc:
                raise UsageError(f"{name}: {exc}") from None

    def check_bounds(self, value: float, label: str) -> None:
        """UsageError naming ``label`` when ``value`` is outside this setting's bounds (NaN always is)."""
        spec = self.spec
        low = spec.above if spec.above is not None else spec.at_least
        if low is None and spec.at_most is None:
            return
        inside = ((spec.above is None or value > spec.above) and (spec.at_least is None or value >= spec.at_least)
                  and (spec.at_most is None or value <= spec.at_most))
        if inside:
            return
        if spec.at_most is None:
            message = f"{value} must be {low} or more"
        elif self.kind is int:
            message = f"{value} must be between {low} and {spec.at_most}"
        else:
            interval = f"{'(' if spec.above is not None else '['}{low}, {spec.at_most}]"
            message = f"{value} must be in {interval}{' ' + spec.unit if spec.unit else ''}"
        raise UsageError(f"{label}: {message}")


def _resolve(hint: Any) -> tuple[type, tuple[str, ...], bool]:
    """(kind, choices, optional) of a Settings field's annotation."""
    args = get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(arg for arg in args if arg is not type(None))
    origin = get_origin(hint)
    if origin is Literal:
        return str, get_args(hint), optional
    if origin is tuple:
        return tuple, (), optional
    if origin is Mapping:
        return dict, (), optional
    return hint, (), optional


def _settings() -> dict[str, Setting]:
    hints = get_type_hints(Settings)
    out: dict[str, Setting] = {}
    for f in fields(Settings):
        if "setting" in f.metadata:
            kind, choices, optional = _resolve(hints[f.name])
            spec = f.metadata["setting"]
            out[f.name] = Setting(f.name, spec, kind, spec.choices or choices, optional)
    return out


#: Every setting, in the order of its field.
SETTINGS: dict[str, Setting] = _settings()
# the names an error message may start with for each setting: its own, its flags' and its item's
_ALIASES: dict[str, str] = {
    alias: s.name for s in SETTINGS.values()
    for alias in (s.name, s.spec.item, *(flag.removeprefix("--") for flag in s.flags)) if alias}


def renamed(exc: UsageError, origin: Mapping[str, str]) -> UsageError:
    """``exc`` with the setting its message starts with named as ``origin`` says the user named it."""
    head, sep, rest = str(exc).partition(": ")
    name = _ALIASES.get(head)
    if not sep or name is None or name not in origin:
        return exc
    return type(exc)(f"{origin[name]}: {rest}")


def validate(s: Settings) -> None:
    """Raise UsageError naming the first invalid setting of ``s``: each one's own type, choices,
    bounds and check (from its definition), then the rules across settings."""
    for one in SETTINGS.values():
        one.check(getattr(s, one.name))
    _check_versions(s)
    _check_mode(s)
    _check_client_timeout(s)
    _check_warmup(s)
    _check(not s.progress_deadline_s or s.progress_deadline_s > s.min_ready_s, "progress_deadline_s",
           f"{s.progress_deadline_s:g} must be longer than {s.called('min_ready_s')} ({s.min_ready_s:g}), "
           "or no new server could ever count in time")
    _check(not (s.pause_at_mixed and s.pause_after_batch), "pause_at_mixed",
           f"give {s.called('pause_at_mixed')} or {s.called('pause_after_batch')}, not both: a rollout has one "
           "planned pause")
    _check(not s.sticky_canary or strategies.of(s.strategy).weighted, "sticky_canary",
           f"applies to a strategy that sends a share by weight (canary), not {s.strategy}")
    _check(not s.load or s.min_requests > 0, "min_requests",
           "0 with the load on would pass a run that measured nothing: give 1 or more, or --no-load")


def _check(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise UsageError(f"{name}: {message}")


def _check_versions(s: Settings) -> None:
    """The versions' names, the ones declared, and the app's contract."""
    for name in ("version", "to_version"):
        if getattr(s, name):
            check_name(getattr(s, name), name)
    check_declared(s.images, s.builds)
    try:
        check_spec(s.app_spec())
    except ValueError as exc:  # shlex: an unclosed quote in command
        raise UsageError(str(exc) if isinstance(exc, UsageError) else f"command: {exc}") from None
    declared = {**s.images, **s.builds}
    if s.version:
        known = declared or TOY_VERSIONS
        _check(s.version in known, "version", f"unknown version {s.version!r}; declared: {', '.join(known)}")
    if declared and s.to_version:
        _check(s.to_version in declared, "to_version",
               f"unknown version {s.to_version!r}; declared: {', '.join(declared)}")


def _check_mode(s: Settings) -> None:
    """The combinations in-place refuses (Swarm, and strategies that start new containers), and
    those a detach lag does not apply to (in place, and strategies that kill)."""
    _check(not (s.engine == "swarm" and s.mode == "in-place"), "mode",
           "in-place cannot run on Swarm (a service has no code volume to swap); use --mode replace")
    _check(not (s.mode == "in-place" and not strategies.of(s.strategy).in_place),
           "mode", f"in-place cannot be used with {s.strategy} (it needs new containers)")
    _check(not (s.detach_lag_s and s.mode == "in-place"), "detach_lag_s",
           "applies to --mode replace only (in place, no server is stopped)")
    _check(not (s.detach_lag_s and not strategies.of(s.strategy).graceful), "detach_lag_s",
           f"does not apply to {s.strategy}, which kills servers before it detaches them")


def _check_client_timeout(s: Settings) -> None:
    """A client timeout that lets a freeze show as a stall."""
    _check(s.client_timeout_s > s.max_stall_s, "client_timeout_s",
           f"{s.client_timeout_s} must be larger than {s.called('max_stall_s')} ({s.max_stall_s}), "
           "or a freeze shows only as timeouts, never as a stall")


def _check_warmup(s: Settings) -> None:
    """A warm-up to compare the rollout's latency with, whenever there is load."""
    _check(not s.load or s.warmup_s > 0, "warmup_s",
           "0 with the load on leaves the p99 check no baseline: give --warmup above 0, or --no-load")


def check_batch(strategy: str, batch: int, size: int) -> None:
    """Refuse a batch the strategy cannot take in a fleet of ``size`` (rolling: the whole fleet at once).

    Config validation cannot know the fleet's size for ``roll`` (the fleet is
    already up): ``roll`` calls this once it has read the fleet, before it
    touches anything; ``demo`` and ``compare`` before they start one.
    """
    strategies.of(strategy).check_batch(batch, size)


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults, ``sandbox.toml``, ``SANDBOX_*`` variables and ``overrides`` (CLI flags).

    ``overrides`` entries whose value is None are ignored (a flag not given). ``flags`` maps each
    setting the command has a flag for to that flag: errors about that setting name the flag,
    unless its value came from the file or the environment. Raises UsageError for an unknown key,
    an unreadable file or a bad value.
    """
    merged: dict[str, Any] = {}
    origin: dict[str, str] = dict(flags or {})
    path = config_path if config_path is not None else Path("sandbox.toml")
    if config_path is not None or path.is_file():
        _from_file(path, merged, origin)
    env = os.environ if environ is None else environ
    for one in SETTINGS.values():
        raw = env.get(one.env)
        if raw is not None:
            origin[one.name] = one.env
            merged[one.name] = one.parse(raw, one.env)
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in SETTINGS:
            raise UsageError(f"{name}: unknown setting")
        origin[name] = (flags or {}).get(name, name)
        merged[name] = SETTINGS[name].parse(value, origin[name])
    return Settings(**merged, origin=origin)


def _from_file(path: Path, merged: dict[str, Any], origin: dict[str, str]) -> None:
    """The settings of ``sandbox.toml``: a flat ``[sandbox]`` table (or top-level keys), a table per
    group (``[fleet]``, ``[limits]``, ...) holding that group's settings, and ``[versions]``."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"config: cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config: {path}: {exc}") from exc
    flat = data["sandbox"] if "sandbox" in data else {
        k: v for k, v in data.items() if k != "versions" and k not in GROUPS}
    tables: list[tuple[str | None, Any]] = [(None, flat), *((g, data[g]) for g in GROUPS if g in data)]
    for group, table in tables:
        if not isinstance(table, Mapping):
            raise UsageError(f"config: {path}: [{group or 'sandbox'}] must be a table of settings")
        for key, value in table.items():
            one = SETTINGS.get(key.replace("-", "_"))
            if one is None:
                raise UsageError(f"config: {path}: unknown setting {key!r}")
            if group is not None and one.spec.group != group:
                raise UsageError(f"config: {path}: {key!r} belongs in [{one.spec.group}], not [{group}]")
            origin[one.name] = key if group is None else f"{group}.{key}"
            merged[one.name] = one.parse(value, origin[one.name])
    _versions_table(merged, data, path)


def _versions_table(merged: dict[str, Any], data: Mapping[str, Any], path: Path) -> None:
    """A ``[versions]`` table (``name = "image:tag"`` or ``name = {build = "dir"}``) into images/builds."""
    versions = data.get("versions")
    if versions is None:
        return
    if not isinstance(versions, Mapping):
        raise UsageError(f"config: {path}: [versions] must be a table of NAME = \"IMAGE\" "
                         "or NAME = {build = \"DIR\"}")
    images, builds = dict(merged.get("images", {})), dict(merged.get("builds", {}))
    for name, value in versions.items():
        if isinstance(value, str):
            images[name] = value
        elif isinstance(value, Mapping) and isinstance(value.get("build"), str):
            builds[name] = str((path.parent / value["build"]).resolve()) if not Path(value["build"]).is_absolute() \
                else value["build"]
        else:
            raise UsageError(f"config: {path}: versions.{name} must be \"IMAGE\" or {{build = \"DIR\"}}")
    if images:
        merged["images"] = images
    if builds:
        merged["builds"] = builds


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Raise PortInUseError when ``host:port`` cannot be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as servers do: a port held only by TIME_WAIT connections counts as free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUseError(f"port: {host}:{port} is already in use ({exc.strerror})") from exc
