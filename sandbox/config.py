"""Typed settings, validated once, before anything is touched.

Values come, lowest precedence first, from built-in defaults, an optional
``sandbox.toml`` (path from ``--config`` or ``./sandbox.toml``), environment
variables ``SANDBOX_<FIELD>`` (for example ``SANDBOX_PORT=9090``) and command
line flags. Every bad value raises :class:`~sandbox.errors.UsageError` naming
the field, so the CLI exits 2 with one line and no container is created.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from sandbox.errors import PortInUseError, UsageError
from sandbox.fleet.versions import AppSpec, check_declared, check_name, check_spec, parse_pairs
from sandbox.load.rows import DEFAULT_THINK_MS, V2Mode, parse_think_ms
from sandbox.rollout import strategies
from sandbox.rollout.plan import Mode, Strategy, Version  # one definition each: the planner's

LbApply = Literal["reload", "dynamic"]
Engine = Literal["docker", "swarm"]
FailureAction = Literal["pause", "rollback", "continue"]

VERSIONS: tuple[str, ...] = ("v1", "v2")  # the built-in toy app's
STRATEGIES: tuple[str, ...] = strategies.NAMES
MODES: tuple[str, ...] = get_args(Mode)
V2_MODES: tuple[str, ...] = get_args(V2Mode)
LB_APPLY_MODES: tuple[str, ...] = get_args(LbApply)
ENGINES: tuple[str, ...] = get_args(Engine)
FAILURE_ACTIONS: tuple[str, ...] = get_args(FailureAction)

PROJECT_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38}[A-Za-z0-9])?$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SESSION_STORES = ("memory", "shared")
MAX_SIZE = 64
MAX_LOAD_WORKERS = 16
#: Locust worker processes by default: one per core, at least 2 (measured in README, "Load").
DEFAULT_LOAD_WORKERS = max(2, min(os.cpu_count() or 2, 4))


@dataclass(frozen=True)
class Settings:
    """Everything a command may need; each command reads the fields it uses."""

    project: str = "sandbox"
    engine: Engine = "docker"  # plain containers, or Swarm services (sandbox/fleet/swarm.py)
    # fleet
    size: int = 3
    port: int = 8080
    version: Version = ""  # "" = the first declared version (v1 for the toy app)
    images: Mapping[str, str] = field(default_factory=dict)  # --image NAME=REF: the user's versions
    builds: Mapping[str, str] = field(default_factory=dict)  # --build NAME=DIR: built first
    sticky: bool = False
    lb_retry: bool = False
    client_keepalive: bool = True
    lb_apply: LbApply = "dynamic"  # how a change of the attached set reaches NGINX
    app_env: Mapping[str, str] = field(default_factory=dict)
    sessions: str = "memory"  # where carts live: "memory" (each server's own) or "shared" (one Redis)
    # your app's contract (sandbox.fleet.versions.AppSpec; recorded in the fleet at `up`)
    app_port: int = 8000
    health_path: str = ""  # "" = the image's HEALTHCHECK, else a TCP connect (the toy app: /healthz)
    stop_signal: str = ""  # "" = the image's STOPSIGNAL
    stop_timeout: float = 20.0
    app_command: str = ""  # --command: "" = the image's CMD; split like a shell would
    memory: str = "128m"
    read_only: bool = True
    # rollout
    to_version: Version = ""  # "" = the last declared version (v2 for the toy app)
    strategy: Strategy = strategies.DEFAULT_STRATEGY
    batch: int = 1
    mode: Mode = "replace"
    drain_timeout: float = 30.0
    ready_timeout: float = 30.0
    ready_successes: int = 1  # /healthz answers for the version it serves: one pass is exact
    settle_s: float = 0.0
    max_error_ratio: float = 0.05
    auto_rollback: bool = True
    set_env: Mapping[str, str] = field(default_factory=dict)
    seed: int | None = None  # --seed: the order servers are picked in is a shuffle seeded with it
    # --mixed-check: shell commands run once while both versions are attached (SANDBOX_URL set)
    mixed_checks: tuple[str, ...] = ()
    mixed_check_timeout_s: float = 60.0  # each one's; a check still running then is killed and fails
    # swarm-native (compare on --engine swarm): Swarm's own `service update` config
    update_parallelism: int = 1
    update_delay: float = 0.0
    update_failure_action: FailureAction = "pause"
    stop_grace_period: float = 20.0
    swarm_healthcheck: bool = True
    # load
    load: bool = True
    users: int = 20
    spawn_rate: float = 20.0
    locustfile: Path | None = None
    paths: tuple[str, ...] = ()  # --path: your own app's default users GET these ("/" when none)
    warmup_s: float = 3.0
    cooldown_s: float = 3.0
    v2_mode: V2Mode = "compatible"
    load_workers: int = DEFAULT_LOAD_WORKERS  # Locust processes sending requests (1 = no master/workers)
    think_ms: str = DEFAULT_THINK_MS  # default users' wait between requests: "MIN-MAX" or "N" ms
    client_timeout_s: float = 10.0  # the load generator's; above max_stall_s, so a freeze shows as a stall
    # the verdict (sandbox.results.verdict.Limits has the same names)
    max_dropped: int = 0
    max_stall_s: float = 1.0
    slow_ms: float = 2000.0
    max_slow: int = 0
    max_p99_ratio: float = 3.0
    max_p99_ms: float = 250.0
    min_latency_samples: int = 200
    max_violations: int = 0
    min_requests: int = 100

    def __post_init__(self) -> None:
        validate(self)

    def app_spec(self) -> AppSpec:
        """The app's contract these settings declare."""
        return AppSpec(port=self.app_port, health_path=self.health_path, stop_signal=self.stop_signal.upper(),
                       stop_timeout=self.stop_timeout, command=tuple(shlex.split(self.app_command)),
                       memory=self.memory, read_only=self.read_only)


def _check(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise UsageError(f"{name}: {message}")


def validate(s: Settings) -> None:
    """Raise UsageError naming the first invalid field of ``s``."""
    _validate_fleet(s)
    _validate_choices(s)
    _validate_rollout_and_load(s)


def _validate_fleet(s: Settings) -> None:
    """The project, the fleet's size and port, its versions and the app's contract."""
    _check(bool(PROJECT_RE.match(s.project)), "project",
           f"{s.project!r} must be 1-40 letters, digits or dashes, not starting or ending with a dash")
    _check(1 <= s.size <= MAX_SIZE, "size", f"{s.size} must be between 1 and {MAX_SIZE}")
    _check(1 <= s.port <= 65535, "port", f"{s.port} must be between 1 and 65535")
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
        known = declared or VERSIONS
        _check(s.version in known, "version", f"unknown version {s.version!r}; declared: {', '.join(known)}")
    if declared and s.to_version:
        _check(s.to_version in declared, "to_version",
               f"unknown version {s.to_version!r}; declared: {', '.join(declared)}")


def _validate_choices(s: Settings) -> None:
    """Strategy, mode, load balancer, engine and session store, and the combinations they refuse."""
    _check(s.strategy in STRATEGIES, "strategy", f"{s.strategy!r} must be one of {', '.join(STRATEGIES)}")
    _check(s.mode in MODES, "mode", f"{s.mode!r} must be one of {', '.join(MODES)}")
    _check(s.lb_apply in LB_APPLY_MODES, "lb_apply",
           f"{s.lb_apply!r} must be one of {', '.join(LB_APPLY_MODES)}")
    _check(s.engine in ENGINES, "engine", f"{s.engine!r} must be one of {', '.join(ENGINES)}")
    _check(not (s.engine == "swarm" and s.mode == "in-place"), "mode",
           "in-place cannot run on Swarm (a service has no code volume to swap); use --mode replace")
    _check(s.update_parallelism >= 1, "update_parallelism", f"{s.update_parallelism} must be at least 1")
    _check(0 <= s.update_delay <= 3600, "update_delay", f"{s.update_delay} must be in [0, 3600] seconds")
    _check(s.update_failure_action in FAILURE_ACTIONS, "update_failure_action",
           f"{s.update_failure_action!r} must be one of {', '.join(FAILURE_ACTIONS)}")
    _check(0 < s.stop_grace_period <= 3600, "stop_grace_period", f"{s.stop_grace_period} must be in (0, 3600] seconds")
    _check(s.sessions in SESSION_STORES, "sessions", f"{s.sessions!r} must be one of {', '.join(SESSION_STORES)}")
    _check(s.v2_mode in V2_MODES, "v2_mode", f"{s.v2_mode!r} must be one of {', '.join(V2_MODES)}")
    _check(s.batch >= 1, "batch", f"{s.batch} must be at least 1")
    _check(not (s.mode == "in-place" and not strategies.of(s.strategy).in_place),
           "mode", f"in-place cannot be used with {s.strategy} (it needs new containers)")


def _validate_rollout_and_load(s: Settings) -> None:
    """Deadlines, the error ratio, the verdict's limits and the load."""
    for name in ("drain_timeout", "ready_timeout"):
        _check(0 < getattr(s, name) <= 3600, name, f"{getattr(s, name)} must be in (0, 3600] seconds")
    _check(0 <= s.settle_s <= 60, "settle_s", f"{s.settle_s} must be in [0, 60] seconds")
    _check(1 <= s.ready_successes <= 20, "ready_successes", f"{s.ready_successes} must be 1..20")
    _check(0 <= s.max_error_ratio <= 1, "max_error_ratio", f"{s.max_error_ratio} must be in [0, 1]")
    _check(1 <= s.users <= 1000, "users", f"{s.users} must be between 1 and 1000")
    _check(0 < s.spawn_rate <= 1000, "spawn_rate", f"{s.spawn_rate} must be in (0, 1000]")
    _validate_limits(s)
    _validate_rehearsal(s)
    _check(0 <= s.warmup_s <= 600 and 0 <= s.cooldown_s <= 600, "warmup_s/cooldown_s",
           "must be in [0, 600] seconds")
    _check(1 <= s.load_workers <= MAX_LOAD_WORKERS, "load_workers",
           f"{s.load_workers} must be between 1 and {MAX_LOAD_WORKERS}")
    try:
        parse_think_ms(s.think_ms)
    except ValueError as exc:
        raise UsageError(f"think_ms: {exc}") from None
    for path in s.paths:
        _check(isinstance(path, str) and path.startswith("/") and " " not in path, "path",
               f"{path!r} must start with / and have no spaces")
    if s.locustfile is not None:
        _check(s.locustfile.is_file(), "locustfile", f"{s.locustfile} is not a file")
    for name in ("set_env", "app_env"):
        for key, value in getattr(s, name).items():
            _check(bool(ENV_KEY_RE.match(key)), name, f"{key!r} is not a valid environment variable name")
            _check(isinstance(value, str), name, f"{key} must be a string")


def _validate_rehearsal(s: Settings) -> None:
    """The seed of the pick order and the checks run while both versions serve."""
    _check(s.seed is None or (isinstance(s.seed, int) and not isinstance(s.seed, bool) and s.seed >= 0),
           "seed", f"{s.seed!r} must be a whole number >= 0")
    _check(isinstance(s.mixed_checks, tuple), "mixed_checks", "must be a list of shell commands")
    for command in s.mixed_checks:
        _check(isinstance(command, str) and bool(command.strip()), "mixed_checks",
               f"{command!r} must be a non-empty shell command")
    _check(0 < s.mixed_check_timeout_s <= 3600, "mixed_check_timeout_s",
           f"{s.mixed_check_timeout_s} must be in (0, 3600] seconds")


def _validate_limits(s: Settings) -> None:
    """The verdict's limits, and a client timeout that lets a freeze show as a stall."""
    for name in ("max_dropped", "max_slow", "max_violations", "min_requests"):
        _check(getattr(s, name) >= 0, name, f"{getattr(s, name)} must be 0 or more")
    _check(0 <= s.max_stall_s <= 3600, "max_stall_s", f"{s.max_stall_s} must be in [0, 3600] seconds")
    _check(0 < s.slow_ms <= 3_600_000, "slow_ms", f"{s.slow_ms} must be in (0, 3600000] ms")
    _check(s.max_p99_ratio >= 1, "max_p99_ratio", f"{s.max_p99_ratio} must be 1 or more")
    _check(s.max_p99_ratio < float("inf"), "max_p99_ratio", f"{s.max_p99_ratio} must be finite")
    _check(0 < s.max_p99_ms < float("inf"), "max_p99_ms", f"{s.max_p99_ms} must be a finite number of ms above 0")
    _check(s.min_latency_samples >= 1, "min_latency_samples", f"{s.min_latency_samples} must be 1 or more")
    _check(not s.load or s.warmup_s > 0, "warmup_s",
           "0 with the load on leaves the p99 check no baseline: give --warmup above 0, or --no-load")
    _check(0 < s.client_timeout_s <= 600, "client_timeout_s", f"{s.client_timeout_s} must be in (0, 600] seconds")
    _check(s.client_timeout_s > s.max_stall_s, "client_timeout_s",
           f"{s.client_timeout_s} must be larger than max_stall_s ({s.max_stall_s}), "
           "or a freeze shows only as timeouts, never as a stall")


def check_batch(strategy: str, batch: int, size: int) -> None:
    """Refuse a batch the strategy cannot take in a fleet of ``size`` (rolling: the whole fleet at once).

    Config validation cannot know the fleet's size for ``roll`` (the fleet is
    already up): ``roll`` calls this once it has read the fleet, before it
    touches anything; ``demo`` and ``compare`` before they start one.
    """
    strategies.of(strategy).check_batch(batch, size)


def parse_env_pairs(pairs: list[str] | tuple[str, ...], name: str = "set_env") -> dict[str, str]:
    """Turn ``["KEY=VALUE", ...]`` into a dict; raise UsageError naming ``name`` on a bad pair."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not ENV_KEY_RE.match(key):
            raise UsageError(f"{name}: {pair!r} must look like KEY=VALUE")
        out[key] = value
    return out


def _coerce(name: str, raw: Any) -> Any:
    """Convert a TOML or environment value to the type of field ``name``."""
    default = Settings.__dataclass_fields__[name].default
    try:
        if name in ("images", "builds"):
            if not isinstance(raw, Mapping):
                return parse_pairs([p for p in str(raw).split(",") if p], name.rstrip("s"))
            return {str(k): str(v) for k, v in raw.items()}
        if name in ("app_env", "set_env"):
            if isinstance(raw, Mapping):
                return {str(k): str(v) for k, v in raw.items()}
            return parse_env_pairs([p for p in str(raw).split(",") if p], name)
        if name == "paths":
            return tuple(str(p) for p in raw) if isinstance(raw, list) else tuple(p for p in str(raw).split(",") if p)
        if name == "locustfile":
            return None if raw in (None, "") else Path(str(raw))
        if name == "seed":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return None if raw == "" else int(str(raw).strip()) if not isinstance(raw, int) else raw
        if name == "mixed_checks":  # TOML: a list of commands; environment: one command per line
            if isinstance(raw, list) and all(isinstance(c, str) for c in raw):
                return tuple(raw)
            if isinstance(raw, str):
                return tuple(line for line in raw.splitlines() if line.strip())
            raise ValueError(raw)
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(default, int):
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(str(raw).strip()) if not isinstance(raw, int) else raw
        if isinstance(default, float):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{name}: {raw!r} is not a valid value") from exc


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults, ``sandbox.toml``, ``SANDBOX_*`` variables and ``overrides`` (CLI flags).

    ``overrides`` entries whose value is None are ignored (a flag not given).
    Raises UsageError for an unknown key, an unreadable file or a bad value.
    """
    names = {f.name for f in fields(Settings)}
    merged: dict[str, Any] = {}
    path = config_path if config_path is not None else Path("sandbox.toml")
    if config_path is not None or path.is_file():
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise UsageError(f"config: cannot read {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"config: {path}: {exc}") from exc
        table = dict(data["sandbox"]) if "sandbox" in data else {
            k: v for k, v in data.items() if k not in ("versions", "app")}
        _versions_table(table, data, path)
        app = data.get("app", {})
        if not isinstance(app, Mapping):
            raise UsageError(f"config: {path}: [app] must be a table of settings")
        table.update(app)  # the app's contract (version, app_env, ...): the same names as [sandbox]
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in names:
                raise UsageError(f"config: {path}: unknown setting {key!r}")
            merged[name] = _coerce(name, value)
    env = os.environ if environ is None else environ
    for name in names:
        raw = env.get(f"SANDBOX_{name.upper()}")
        if raw is not None:
            merged[name] = _coerce(name, raw)
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in names:
            raise UsageError(f"{name}: unknown setting")
        merged[name] = value
    return Settings(**merged)


def _versions_table(table: dict[str, Any], data: Mapping[str, Any], path: Path) -> None:
    """A ``[versions]`` table (``name = "image:tag"`` or ``name = {build = "dir"}``) into images/builds."""
    versions = data.get("versions")
    if versions is None:
        return
    if not isinstance(versions, Mapping):
        raise UsageError(f"config: {path}: [versions] must be a table of NAME = \"IMAGE\" "
                         "or NAME = {build = \"DIR\"}")
    images, builds = dict(table.get("images", {})), dict(table.get("builds", {}))
    for name, value in versions.items():
        if isinstance(value, str):
            images[name] = value
        elif isinstance(value, Mapping) and isinstance(value.get("build"), str):
            builds[name] = str((path.parent / value["build"]).resolve()) if not Path(value["build"]).is_absolute() \
                else value["build"]
        else:
            raise UsageError(f"config: {path}: versions.{name} must be \"IMAGE\" or {{build = \"DIR\"}}")
    if images:
        table["images"] = images
    if builds:
        table["builds"] = builds


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Raise PortInUseError when ``host:port`` cannot be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as servers do: a port held only by TIME_WAIT connections counts as free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUseError(f"port: {host}:{port} is already in use ({exc.strerror})") from exc
