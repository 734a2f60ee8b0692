"""pytest plugin: a fixture that brings up a fleet of your images for one test and removes it afterwards.

    def test_rollout_drops_nothing(sandbox_fleet):
        fleet = sandbox_fleet({"old": "myapp:old", "new": "myapp:new"}, size=3, health_path="/ready")
        roll = fleet.roll(to="new", strategy="rolling", batch=1, path=["/api/orders"])
        assert roll.exit_code == 0 and roll.dropped == 0, roll.failed_checks

Each fleet is a project of its own (``pytest-<hex>``) on a free port of 127.0.0.1, started and
driven with the ``sandbox`` command line (``python -m sandbox ... --json``) as a subprocess: Locust
and the controller's event loop stay out of the test process (an ``async`` test works too), and
what the test does is what a user would type. ``sandbox down`` runs for every fleet the test
asked for at teardown, whether the test passed, failed or ``up`` itself failed half-way.

Registered as the ``pytest11`` entry point ``sandbox.pytest_plugin``, so installing
rolling-sandbox is enough; ``-p sandbox.pytest_plugin`` loads it from a checkout, and
``-p no:sandbox.pytest_plugin`` keeps it out. Only the standard library is imported here.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from sandbox.errors import SandboxError
from sandbox.ports import free_port

Runner = Callable[[Sequence[str], float], subprocess.CompletedProcess[str]]
"""Runs ``sandbox ARGS`` (the arguments after the program name) with a timeout in seconds."""

PORT_ATTEMPTS = 3  # a free port picked here can be taken before `up` binds it: pick another


class FleetCommandError(SandboxError):
    """A ``sandbox`` command of the fixture exited with an unexpected code; carries what it said."""

    def __init__(self, args: Sequence[str], proc: subprocess.CompletedProcess[str]) -> None:
        self.args_run = list(args)
        self.exit_code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-15:])
        super().__init__(f"sandbox {' '.join(args)} exited {proc.returncode}\n{tail}")


@dataclass(frozen=True)
class Roll:
    """What ``roll``/``rollback`` returned: the JSON report and the exit code (0 pass, 1 verdict
    failed), and what it said on stderr (its progress). Unpacks as ``report, exit_code = fleet.roll(...)``."""

    report: dict[str, Any]
    exit_code: int
    stderr: str = ""

    def __iter__(self) -> Iterator[Any]:
        return iter((self.report, self.exit_code))

    @property
    def passed(self) -> bool:
        return bool((self.report.get("verdict") or {}).get("pass"))

    @property
    def dropped(self) -> int:
        return int((self.report.get("requests") or {}).get("dropped") or 0)

    @property
    def failed_checks(self) -> list[dict[str, Any]]:
        """The verdict's checks that did not hold, each with its figure and its limit."""
        return [c for c in (self.report.get("verdict") or {}).get("checks") or [] if not c.get("pass")]


def flag_args(flags: Mapping[str, Any]) -> list[str]:
    """Keyword arguments as ``sandbox`` flags: ``batch=3`` -> ``--batch 3``; ``no_load=True`` ->
    ``--no-load`` (False or None: left out); a list repeats the flag (``path=["/a", "/b"]``); a
    mapping gives ``KEY=VALUE`` pairs (``set_env={"APP_LATENCY_MS": 50}``)."""
    out: list[str] = []
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                out += [flag, f"{k}={v}"]
        elif isinstance(value, list | tuple):
            for v in value:
                out += [flag, str(v)]
        else:
            out += [flag, str(value)]
    return out


def parse_images(pairs: Sequence[str]) -> dict[str, str]:
    """``["v1=myapp:1", ...]`` (the ``--sandbox-image`` option, the ``sandbox_images`` ini lines)
    -> ``{"v1": "myapp:1"}``; a malformed pair is a usage error naming it."""
    images: dict[str, str] = {}
    for pair in pairs:
        name, sep, ref = pair.strip().partition("=")
        if not sep or not name.strip() or not ref.strip():
            raise pytest.UsageError(f"sandbox image: {pair!r} must be NAME=REF, e.g. v1=myapp:1.4.1")
        images[name.strip()] = ref.strip()
    return images


def subprocess_runner(python: str = sys.executable) -> Runner:
    """Runs ``python -m sandbox ARGS`` in the current directory (so its ``sandbox.toml`` applies)."""

    def run(args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.run([python, "-m", "sandbox", *args], env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    return run


class Fleet:
    """One project's fleet, driven through the ``sandbox`` command line."""

    def __init__(self, project: str, port: int, *, engine: str | None = None, runner: Runner,
                 timeout: float = 600) -> None:
        self.project = project
        self.port = port
        self.engine = engine
        self.timeout = timeout
        self._runner = runner

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        return f"Fleet(project={self.project!r}, url={self.url!r})"

    def run(self, command: str, *args: str, expect: Sequence[int] | None = (0,)) -> subprocess.CompletedProcess[str]:
        """``sandbox COMMAND ARGS --project P``; an exit code outside ``expect`` raises FleetCommandError."""
        full = [command, *args, "--project", self.project]
        if self.engine and command == "up":  # the others use the engine the fleet was started with
            full += ["--engine", self.engine]
        proc = self._runner(full, self.timeout)
        if expect is not None and proc.returncode not in expect:
            raise FleetCommandError(full, proc)
        return proc

    def status(self) -> dict[str, Any]:
        """``sandbox status --json``: the fleet from Docker's labels and the live load balancer."""
        return _json(self.run("status", "--json"), ["status"])

    def roll(self, to: str | None = None, strategy: str | None = None, **flags: Any) -> Roll:
        """``sandbox roll --to TO --strategy S --json`` plus ``flags`` (see :func:`flag_args`).
        Returns the report and the exit code; a verdict that fails is exit code 1, not an exception
        (bad input, exit 2, and anything else raise FleetCommandError)."""
        return self._rollout("roll", {"to": to, "strategy": strategy, **flags})

    def rollback(self, **flags: Any) -> Roll:
        """``sandbox rollback --json``: back to the version before the last roll."""
        return self._rollout("rollback", flags)

    def down(self) -> None:
        self.run("down")

    def _rollout(self, command: str, flags: Mapping[str, Any]) -> Roll:
        proc = self.run(command, *flag_args(flags), "--json", expect=(0, 1))
        return Roll(report=_json(proc, [command]), exit_code=proc.returncode, stderr=proc.stderr)


def _json(proc: subprocess.CompletedProcess[str], args: Sequence[str]) -> dict[str, Any]:
    try:
        data = json.loads(proc.stdout)
    except ValueError as exc:
        raise FleetCommandError(args, proc) from exc
    if not isinstance(data, dict):
        raise FleetCommandError(args, proc)
    return data


class FleetFactory:
    """What the ``sandbox_fleet`` fixture gives a test: call it to bring a fleet up. Every fleet it
    made (or tried to make) is removed by :meth:`close`."""

    def __init__(self, *, runner: Runner, images: Mapping[str, str], engine: str | None,
                 timeout: float, prefix: str = "pytest") -> None:
        self._runner = runner
        self._images = dict(images)
        self._engine = engine
        self._timeout = timeout
        self._prefix = prefix
        self.fleets: list[Fleet] = []

    def __call__(self, images: Mapping[str, str] | None = None, *, size: int = 3, port: int | None = None,
                 version: str | None = None, engine: str | None = None, project: str | None = None,
                 **up_flags: Any) -> Fleet:
        """``sandbox up``: ``images`` maps version names to local images (default: the
        ``--sandbox-image`` option or the ``sandbox_images`` ini lines, else the toy v1/v2);
        ``port`` None picks a free one; ``up_flags`` are any other ``up`` flags
        (``health_path="/ready"``, ``stop_signal="SIGQUIT"``, ``env={"K": "V"}``, ``build={...}``)."""
        image_args = flag_args({"image": images if images is not None else self._images})
        fleet = Fleet(project or f"{self._prefix}-{secrets.token_hex(4)}", port or free_port(),
                      engine=engine or self._engine, runner=self._runner, timeout=self._timeout)
        self.fleets.append(fleet)  # removed at teardown even when `up` fails half-way
        for attempt in range(1, PORT_ATTEMPTS + 1):
            args = ["--size", str(size), "--port", str(fleet.port), *image_args,
                    *flag_args({"version": version, **up_flags})]
            proc = fleet.run("up", *args, expect=None)
            if proc.returncode == 0:
                return fleet
            taken = proc.returncode == 2 and "is already in use" in proc.stderr  # config.check_port_free
            if port is not None or not taken or attempt == PORT_ATTEMPTS:
                raise FleetCommandError(["up", *args, "--project", fleet.project], proc)
            tried = fleet.port  # taken between our pick and `up`: nothing was created, pick another
            while fleet.port == tried:  # the kernel may hand out the same free port twice in a row
                fleet.port = free_port()
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> list[str]:
        """``sandbox down`` for every fleet, newest first; returns the errors (all are tried)."""
        errors: list[str] = []
        for fleet in reversed(self.fleets):
            try:
                fleet.down()
            except (FleetCommandError, subprocess.TimeoutExpired) as exc:
                errors.append(f"{fleet.project}: {exc}")
        self.fleets.clear()
        return errors


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sandbox", "rolling-sandbox fleets (the sandbox_fleet fixture)")
    group.addoption("--sandbox-image", action="append", default=[], metavar="NAME=REF",
                    help="a version of your app for sandbox_fleet when a test names none (repeatable; "
                         "overrides the sandbox_images ini lines)")
    group.addoption("--sandbox-engine", choices=("docker", "swarm"), default=None,
                    help="engine of the fleets (default: the sandbox_engine ini value, else docker)")
    parser.addini("sandbox_images", type="linelist", default=[],
                  help="NAME=REF lines: the versions sandbox_fleet starts when a test names none")
    parser.addini("sandbox_engine", default="", help="docker or swarm (default docker)")
    parser.addini("sandbox_timeout", default="600", help="seconds any one sandbox command may take")


@pytest.fixture
def sandbox_fleet(request: pytest.FixtureRequest) -> Iterator[FleetFactory]:
    """A factory: ``sandbox_fleet(images, size=3, port=None, version=None, engine=None, **up_flags)``
    runs ``sandbox up`` for a new project and returns a :class:`Fleet` (``.url``, ``.project``,
    ``.status()``, ``.roll(to=..., strategy=..., **flags)``, ``.rollback()``). Every fleet is
    removed at teardown, whatever the test did; a failed ``down`` is an error of the test."""
    config = request.config
    pairs = config.getoption("sandbox_image") or config.getini("sandbox_images")
    factory = FleetFactory(runner=subprocess_runner(), images=parse_images(pairs),
                           engine=config.getoption("sandbox_engine") or config.getini("sandbox_engine") or None,
                           timeout=float(config.getini("sandbox_timeout")))
    try:
        yield factory
    finally:
        errors = factory.close()
        if errors:
            pytest.fail("sandbox_fleet teardown: " + "\n".join(errors), pytrace=False)


__all__ = ["Fleet", "FleetCommandError", "FleetFactory", "Roll", "flag_args", "parse_images", "sandbox_fleet"]
